// The API client of the web console: JSON over fetch with the session cookie (HttpOnly, set
// by POST /v1/session) and its CSRF value on every change; errors as ApiError with hvd's
// stable code and message. The page never sees the session token itself.

const CSRF_KEY = 'hv.csrf';
const USER_KEY = 'hv.user';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const enc = encodeURIComponent;
export const vmPath = (name, rest = '') => `/v1/vms/${enc(name)}${rest}`;

export function whoami() {
  return localStorage.getItem(USER_KEY) || '';
}

function csrf() {
  return localStorage.getItem(CSRF_KEY) || '';
}

/** Sends the user to the login page, back here afterwards. */
export function toLogin() {
  const next = location.pathname.replace(/^\/ui\//, '') + location.search;
  location.replace(`login.html?next=${enc(next)}`);
}

/** The error of a failed response, from hvd's `{"error": {code, message}}`. */
export async function errorOf(resp) {
  let code = `http-${resp.status}`;
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(resp.status, code, message);
}

/** One API call. A 401 (the session ended) goes to the login page. */
export async function api(method, path, body, { signal, raw } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-HV-CSRF'] = csrf();
  const init = { method, headers, credentials: 'same-origin', signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    toLogin();
    throw await errorOf(resp);
  }
  if (!resp.ok) throw await errorOf(resp);
  if (raw) return resp;
  if (resp.status === 204) return null;
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export async function login(user, password) {
  const info = await fetch('/v1/session', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, password }),
  });
  if (!info.ok) throw await errorOf(info);
  const s = await info.json();
  localStorage.setItem(CSRF_KEY, s.csrf);
  localStorage.setItem(USER_KEY, s.user);
  return s;
}

export async function logout() {
  try {
    await api('DELETE', '/v1/session');
  } finally {
    localStorage.removeItem(CSRF_KEY);
    localStorage.removeItem(USER_KEY);
    location.replace('login.html');
  }
}

/**
 * Uploads a file as a NEW medium `pool/vol` for VM `name` and inserts it into its drive
 * (PUT /v1/vms/NAME/media/upload) with progress; resolves to the MediumInfo.
 */
export function uploadMedium(name, pool, vol, file, onProgress) {
  const q = `pool=${enc(pool)}&volume=${enc(vol)}&insert=true`;
  return putFile(`${vmPath(name, '/media/upload')}?${q}`, file, onProgress);
}

/** PUT of a file's bytes; XMLHttpRequest, because fetch reports no upload progress. */
function putFile(url, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', url);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.setRequestHeader('X-HV-CSRF', csrf());
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the upload failed: the connection to hvd broke'));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* keep null */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body?.error?.code || `http-${xhr.status}`,
        body?.error?.message || `upload refused: ${xhr.status}`));
    };
    xhr.send(file);
  });
}

/** Shows (or clears, with '') the page's last error in the `error` element. */
export function showError(e) {
  const el = document.querySelector('[data-testid=error]');
  if (!el) return;
  const msg = typeof e === 'string' ? e : (e && e.message) || String(e);
  el.textContent = msg;
  el.hidden = !msg;
}

/** Runs an async action from a button, showing its error; the button is busy meanwhile. */
export async function act(button, fn) {
  if (button) button.disabled = true;
  try {
    showError('');
    return await fn();
  } catch (e) {
    if (!(e instanceof DOMException && e.name === 'AbortError')) showError(e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** Fills in the header's user name and wires its logout button. */
export function wireHeader() {
  const who = document.querySelector('[data-testid=whoami]');
  if (who) who.textContent = whoami();
  const out = document.querySelector('[data-testid=logout]');
  if (out) out.addEventListener('click', () => logout());
}

/** A VM's control state, or null when this hvd has no shared control. */
export async function consoles() {
  try {
    return await api('GET', '/v1/consoles');
  } catch (e) {
    if ([403, 404, 405].includes(e.status)) return null;
    throw e;
  }
}
