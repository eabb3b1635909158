// The login / create-account screen.

import { $ } from '../dom.js';
import { errorText } from '../errors.js';

export class LoginView {
  constructor(api, onLoggedIn) {
    this.api = api;
    this.onLoggedIn = onLoggedIn;
    this.mode = 'login';
    this.info = null;
    this.root = $('#login-view');
    this.form = $('#auth-form');
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    $('#auth-switch').addEventListener('click', () => this.setMode(this.mode === 'login' ? 'register' : 'login'));
  }

  show(info) {
    this.info = info;
    $('#login-node').textContent = info && info.name ? `Node: ${info.name}` : '';
    $('#auth-switch').parentElement.hidden = info ? !info.registration_open : false;
    this.setMode('login');
    this.root.hidden = false;
    $('#auth-username').focus();
  }

  hide() {
    this.root.hidden = true;
    $('#auth-password').value = '';
  }

  setMode(mode) {
    this.mode = mode;
    const register = mode === 'register';
    $('#auth-title').textContent = register ? 'Create an account' : 'Log in';
    $('#auth-submit').textContent = register ? 'Create account' : 'Log in';
    $('#auth-display-row').hidden = !register;
    $('#auth-switch-text').textContent = register ? 'Have an account?' : 'New here?';
    $('#auth-switch').textContent = register ? 'Log in' : 'Create an account';
    $('#auth-password').autocomplete = register ? 'new-password' : 'current-password';
    const hint = $('#auth-hint');
    const min = (this.info && this.info.min_password_length) || 8;
    hint.textContent = `At least ${min} characters.`;
    hint.hidden = !register;
    $('#auth-error').textContent = '';
  }

  async submit() {
    const username = $('#auth-username').value.trim().toLowerCase();
    const password = $('#auth-password').value;
    const error = $('#auth-error');
    error.textContent = '';
    if (!username || !password) {
      error.textContent = 'Enter a username and a password.';
      return;
    }
    const min = (this.info && this.info.min_password_length) || 8;
    if (this.mode === 'register' && password.length < min) {
      error.textContent = `The password needs at least ${min} characters.`;
      return;
    }
    const button = $('#auth-submit');
    button.disabled = true;
    try {
      if (this.mode === 'register') await this.api.register(username, password, $('#auth-display').value.trim());
      const result = await this.api.login(username, password);
      this.onLoggedIn(result);
    } catch (err) {
      error.textContent = errorText(err, 'login');
    } finally {
      button.disabled = false;
    }
  }
}
