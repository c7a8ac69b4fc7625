// The bearer token: the field it is typed in, and remembering it in this browser (or not). The API client
// reads it for every request; nothing else touches it.

import { $ } from "./util.js";

const TOKEN_KEY = "stable-audio-token";

export function token() {
  return $("token").value.trim();
}

function saveToken() {
  const t = token();
  const remember = $("token-remember").checked;
  try {
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    if (t) (remember ? localStorage : sessionStorage).setItem(TOKEN_KEY, t);
  } catch {
    /* storage may be off; the field still works for this page */
  }
}

// A token remembered earlier goes back into the field before the first request.
export function restoreToken() {
  try {
    const savedToken = localStorage.getItem(TOKEN_KEY) || sessionStorage.getItem(TOKEN_KEY);
    if (savedToken) {
      $("token").value = savedToken;
      $("token-remember").checked = !!localStorage.getItem(TOKEN_KEY);
    }
  } catch {
    /* no storage */
  }
}

// The token box's controls; onSet runs when a token is set (the page then asks the service again).
export function wireToken(onSet) {
  $("token-save").addEventListener("click", () => {
    saveToken();
    $("token-note").textContent = token() ? "Token set." : "No token.";
    onSet();
  });
  $("token").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      $("token-save").click();
    }
  });
  $("token-remember").addEventListener("change", saveToken);
}
