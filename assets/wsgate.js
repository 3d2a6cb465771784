// wsgate.js: the browser client (WebSocket first, then the fallback transports).
