//! The response body of every answer the gateway gives over HTTP: a whole body, or a stream of
//! chunks fed by a task through a channel of one (a fallback stream: the task waits while the
//! client does not read).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body.
pub enum Body {
    Full(Full<Bytes>),
    /// Chunks as they come; the body ends when the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
    /// A body, and what lives until the connection is done with it (a fallback request's place
    /// among its session's requests in flight).
    Held {
        body: Box<Body>,
        _hold: Box<dyn std::any::Any + Send>,
    },
}

impl From<Full<Bytes>> for Body {
    fn from(b: Full<Bytes>) -> Body {
        Body::Full(b)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Pin::new(b).poll_frame(cx),
            Body::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c)))),
            Body::Held { body: b, .. } => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_end_stream(),
            Body::Stream(_) => false,
            Body::Held { body: b, .. } => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => b.size_hint(),
            Body::Stream(_) => SizeHint::default(),
            Body::Held { body: b, .. } => b.size_hint(),
        }
    }
}
