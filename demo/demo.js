// The classic first WebSocket example, through wsgate.
(function () {
  var log = document.getElementById('log');
  var status = document.getElementById('status');
  function show(line) {
    log.textContent += line + '\n';
    console.log(line);
  }
  var scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  var ws = new WebSocket(scheme + location.host + '/demo');
  ws.onopen = function () {
    status.textContent = 'connected';
    show('client: ws connection is open');
    ws.send('from client: hello');
  };
  ws.onmessage = function (e) {
    show('client: received ' + e.data);
  };
  ws.onclose = function (e) {
    status.textContent = 'closed (code ' + e.code + (e.reason ? ', ' + e.reason : '') + ')';
  };
  ws.onerror = function () {
    status.textContent = 'error (see the gateway log)';
  };
})();
