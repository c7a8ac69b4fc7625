"""Model families (one module each), loading, and the offline tiny-model builder."""
