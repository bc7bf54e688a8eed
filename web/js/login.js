// The login page: POST /v1/session, then back to where the user came from (a page of ours).
import { login } from './api.js';

const form = document.getElementById('login-form');
const err = document.querySelector('[data-testid=login-error]');

function nextPage() {
  const n = new URLSearchParams(location.search).get('next') || '';
  // Only pages of this UI: a relative name without scheme, host or parent steps.
  return /^[A-Za-z0-9_-]+\.html(\?[A-Za-z0-9=&%._-]*)?$/.test(n) ? n : './';
}

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  err.hidden = true;
  const submit = form.querySelector('[data-testid=login-submit]');
  submit.disabled = true;
  try {
    await login(form.user.value.trim(), form.password.value);
    location.replace(nextPage());
  } catch (e) {
    err.textContent = e.message || String(e);
    err.hidden = false;
    form.password.value = '';
    form.password.focus();
  } finally {
    submit.disabled = false;
  }
});
