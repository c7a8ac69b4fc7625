"""Model families (one module each, exporting one `Family` descriptor), the registry that lists them, loading,
and the offline tiny-model builder."""
