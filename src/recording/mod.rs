//! Session recording for audit (a route's `record = "DIR"`), and reading recordings back.
//!
//! Owns the recording file format (JSON Lines, below), the per-session writer that runs beside a
//! session without slowing it, and the reader behind `wsgate replay`. It does not decide what a
//! session sends: the pump hands it the bytes it wrote to and read from the backend.
//!
//! - [`format`]: one line <-> one [`Entry`]; the only place that knows the line layout
//! - [`writer`]: the file of one session, its bounded queue and the task that drains it
//! - [`reader`]: a recording as entries, tolerant of a cut-short last line; follows a live file
//! - [`replay`]: `wsgate replay FILE`: readable listing, `--raw in|out`, `--realtime`, `--follow`
//!
//! The format, one JSON object per line:
//!
//! ```text
//! {"v":1,"type":"start","session":7,"route":"/vnc","client":"127.0.0.1:50000","backend":"127.0.0.1:5900",
//!  "subprotocol":null,"framing":"raw","time":"2024-05-01T12:00:00.000Z"}
//! {"t":12,"dir":"in","kind":"text","data":"hello\n"}
//! {"t":13,"dir":"out","kind":"binary","data":"aGVsbG8K"}
//! {"t":40,"type":"gap","dir":"out","bytes":65536,"reason":"queue full"}
//! {"t":900,"type":"end","close":1000,"reason":"client closed"}
//! ```
//!
//! `in` is client -> backend, `out` backend -> client. `data` holds the backend bytes of one
//! message (see [`format`] for each framing mode), a JSON string for text and base64 for binary:
//! concatenating one direction's `data` gives back the bytes that crossed the backend connection.

pub mod format;
pub mod reader;
pub mod replay;
pub mod writer;

pub use format::{Dir, Entry, GapReason, Header, Kind, LineError, FORMAT_VERSION};
pub use reader::Reader;
pub use writer::{OpenError, Recorder, RecordingCounters, RecordingSettings};
