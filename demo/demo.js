// The classic first WebSocket example, through wsgate, with a box to type more lines.
(function () {
  var log = document.getElementById('log');
  var status = document.getElementById('status');
  var transport = document.getElementById('transport');
  var form = document.getElementById('form');
  var input = document.getElementById('input');
  var button = document.getElementById('send');
  function show(line) {
    log.textContent += line + '\n';
    console.log(line);
  }
  var scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  // WsgateSocket (from /wsgate.js) has WebSocket's API, and falls back to plain HTTP requests
  // when a WebSocket cannot get through.
  var ws = new WsgateSocket(scheme + location.host + '/demo');
  window.demoSocket = ws; // to play with from the browser console
  function showTransport() {
    transport.textContent = ws.transport;
  }
  function send(text) {
    ws.send(text);
    show('client: sent ' + text);
  }
  showTransport();
  ws.addEventListener('transport', showTransport);
  ws.onopen = function () {
    status.textContent = 'connected';
    showTransport();
    input.disabled = false;
    button.disabled = false;
    show('client: ws connection is open');
    send('from client: hello');
  };
  ws.onmessage = function (e) {
    show('client: received ' + e.data);
  };
  ws.onclose = function (e) {
    input.disabled = true;
    button.disabled = true;
    status.textContent = 'closed (code ' + e.code + (e.reason ? ', ' + e.reason : '') + ')';
  };
  ws.onerror = function () {
    status.textContent = 'error (see the gateway log)';
  };
  // The Send button, or Enter in the box: one line to the greeter.
  form.onsubmit = function (e) {
    e.preventDefault();
    if (input.value === '' || ws.readyState !== ws.OPEN) return;
    send(input.value);
    input.value = '';
    input.focus();
  };
})();
