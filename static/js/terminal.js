// The web terminal on the sandbox page: xterm.js (static/vendor/xterm, built by
// scripts/build-static) talking to /ws/sandboxes/<id>/terminal/ (sandboxes/websocket.py).
//
// A session is opened only when asked ("Open terminal": each one is a shell and an audit
// row). Its id is kept in sessionStorage for this tab, so a reload, or the panel being
// swapped when the status changes, attaches to the same shell and the server replays its
// scrollback; a dropped connection is retried the same way. Binary frames are the
// terminal's bytes both ways; text frames are JSON control messages.
(function () {
  "use strict";

  const encoder = new TextEncoder();
  const storageKey = (sandbox) => "sandboxes.terminal." + sandbox;
  const RETRY_MS = [500, 1000, 2000, 4000, 8000];

  function remembered(sandbox) {
    try {
      return sessionStorage.getItem(storageKey(sandbox));
    } catch (e) {
      return null; // storage switched off: sessions still work, without reattaching
    }
  }

  function remember(sandbox, session) {
    try {
      if (session) sessionStorage.setItem(storageKey(sandbox), session);
      else sessionStorage.removeItem(storageKey(sandbox));
    } catch (e) {
      /* as above */
    }
  }

  function setup(root) {
    if (root.dataset.ready) return;
    root.dataset.ready = "1";
    const sandbox = root.dataset.sandbox;
    const screen = root.querySelector("[data-terminal-screen]");
    const state = root.querySelector("[data-terminal-state]");
    const buttons = {
      open: root.querySelector("[data-terminal-open]"),
      copy: root.querySelector("[data-terminal-copy]"),
      paste: root.querySelector("[data-terminal-paste]"),
      close: root.querySelector("[data-terminal-close]"),
    };
    let term = null;
    let fit = null;
    let socket = null;
    let retries = 0;
    let retryTimer = null;
    let disposed = false;

    function say(text) {
      state.textContent = text;
    }

    function showSession(live) {
      buttons.open.hidden = live;
      buttons.copy.hidden = !live;
      buttons.paste.hidden = !live;
      buttons.close.hidden = !live;
    }

    // Typed while the connection is being made (or remade): kept, and sent once attached,
    // so the first keys after "Open terminal" or a reconnect are not lost.
    let pending = [];
    let attached = false;

    function send(data) {
      if (socket && attached && socket.readyState === WebSocket.OPEN) socket.send(data);
      else if (socket && pending.length < 1000) pending.push(data);
    }

    function sendControl(message) {
      send(JSON.stringify(message));
    }

    function copySelection() {
      const text = term && term.getSelection();
      if (!text) return say("Select text in the terminal to copy it.");
      navigator.clipboard.writeText(text).then(
        () => say("Copied."),
        () => say("The browser refused the clipboard; use Ctrl+Shift+C or the context menu.")
      );
    }

    function pasteClipboard() {
      if (!navigator.clipboard || !navigator.clipboard.readText) {
        return say("This browser cannot paste from a button; use Ctrl+Shift+V.");
      }
      term.focus(); // now, not when the clipboard answers: Enter must not press Paste again
      navigator.clipboard.readText().then(
        (text) => term.paste(text), // bracketed paste when the program asked for it
        () => say("The browser refused the clipboard; use Ctrl+Shift+V.")
      );
    }

    // Ctrl+C and Ctrl+V belong to the program in the terminal (interrupt, literal next);
    // copy and paste are Ctrl+Shift+C / Ctrl+Shift+V, as in desktop terminals (Cmd+C /
    // Cmd+V on a Mac work as they are).
    function keys(event) {
      if (event.type !== "keydown" || !event.ctrlKey || !event.shiftKey) return true;
      const key = event.key.toLowerCase();
      if (key === "c") {
        event.preventDefault(); // Chrome would open its inspector
        copySelection();
        return false;
      }
      if (key === "v") {
        return false; // the browser pastes into xterm's textarea; xterm sends it on
      }
      return true;
    }

    function ensureTerminal() {
      if (term) return;
      screen.hidden = false;
      const narrow = window.matchMedia("(max-width: 700px)").matches;
      term = new Terminal({
        cursorBlink: true,
        fontSize: narrow ? 12 : 14,
        fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
        scrollback: 5000,
        theme: { background: "#1b1f24" },
      });
      fit = new FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(screen);
      fit.fit();
      term.attachCustomKeyEventHandler(keys);
      term.onData((data) => send(encoder.encode(data)));
      term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
      term.onResize(({ cols, rows }) => sendControl({ type: "resize", cols, rows }));
      // The panel follows the window (and a rotated phone); fit() only acts on a change.
      const refit = () => {
        if (!disposed && !screen.hidden) fit.fit();
      };
      window.addEventListener("resize", refit);
      if (window.ResizeObserver) new ResizeObserver(refit).observe(screen);
    }

    function connect(session) {
      clearTimeout(retryTimer);
      ensureTerminal();
      const url = new URL(root.dataset.socket, window.location.href);
      url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
      if (session) url.searchParams.set("session", session);
      url.searchParams.set("cols", term.cols);
      url.searchParams.set("rows", term.rows);
      say(session ? "Reconnecting…" : "Opening a shell…");
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      attached = false;
      let finished = false; // the server said how it ended: no retry
      let opened = false;
      socket = ws;
      ws.onopen = () => {
        opened = true;
      };
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") {
          term.write(new Uint8Array(event.data));
          return;
        }
        const message = JSON.parse(event.data);
        if (message.type === "attached") {
          retries = 0;
          remember(sandbox, message.session);
          // A replay of the whole scrollback follows (or a new shell starts): from a clean
          // screen, so nothing shows twice.
          term.reset();
          showSession(true);
          say(message.resumed ? "Reattached to your session." : "Connected.");
          attached = true;
          sendControl({ type: "resize", cols: term.cols, rows: term.rows });
          pending.forEach((data) => ws.send(data));
          pending = [];
          term.focus();
        } else if (message.type === "exit") {
          finished = true;
          remember(sandbox, null);
          showSession(false);
          const code = message.code === null ? "" : ` (exit code ${message.code})`;
          say(`The session ended${code}.`);
        } else if (message.type === "displaced") {
          finished = true;
          showSession(false);
          buttons.open.hidden = true;
          say("This session is now open in another window or tab; reload to take it back.");
        } else if (message.type === "gone") {
          finished = true;
          remember(sandbox, null);
          showSession(false);
          say("Your earlier session has ended; open a new one.");
        } else if (message.type === "error") {
          say(message.message);
        }
      };
      ws.onclose = () => {
        attached = false;
        if (socket === ws) socket = null;
        if (disposed || finished) {
          pending = [];
          return;
        }
        const session = remembered(sandbox);
        if (!session || (!opened && retries >= RETRY_MS.length)) {
          pending = [];
          showSession(false);
          say(opened ? "Disconnected." : "Could not connect to the terminal.");
          return;
        }
        // Dropped: come back to the same session while the server keeps it.
        const delay = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
        retries += 1;
        say("Connection lost; reconnecting…");
        retryTimer = setTimeout(() => connect(session), delay);
      };
    }

    buttons.open.addEventListener("click", () => connect(null));
    buttons.copy.addEventListener("click", copySelection);
    buttons.paste.addEventListener("click", pasteClipboard);
    buttons.close.addEventListener("click", () => sendControl({ type: "close" }));

    // Removed from the page (the panel swapped out when the status changed): leave the
    // session to the server, which keeps it for the new panel to attach to.
    root.terminalDispose = () => {
      disposed = true;
      clearTimeout(retryTimer);
      if (socket) socket.close(1000);
      if (term) term.dispose();
    };
    root.terminal = () => term; // for the browser tests and the curious

    const session = remembered(sandbox);
    if (session) connect(session);
  }

  function scan(element) {
    if (element.matches && element.matches("[data-terminal]")) setup(element);
    if (element.querySelectorAll) element.querySelectorAll("[data-terminal]").forEach(setup);
  }

  document.addEventListener("DOMContentLoaded", () => scan(document));
  document.addEventListener("htmx:load", (event) => scan(event.target));
  document.addEventListener("htmx:beforeCleanupElement", (event) => {
    if (event.target.terminalDispose) event.target.terminalDispose();
  });
})();
