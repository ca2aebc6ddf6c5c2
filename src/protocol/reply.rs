//! Response bodies: whole, or a state read from a file and sent a piece at
//! a time, so a 256 MiB state costs a few hundred kilobytes of memory per
//! reader instead of 256 MiB.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::stores::Payload;

/// Pieces read ahead of the socket, per response.
const READ_AHEAD: usize = 2;

/// A response body.
pub enum Reply {
    /// Held whole (every answer but a large state).
    Full(Full<Bytes>),
    /// Read from a file, [`READ_AHEAD`] pieces ahead of the client; the
    /// reading stops when the client goes away.
    Stream {
        pieces: mpsc::Receiver<io::Result<Bytes>>,
        remaining: u64,
    },
}

impl From<Full<Bytes>> for Reply {
    fn from(full: Full<Bytes>) -> Self {
        Reply::Full(full)
    }
}

impl Reply {
    /// A body sending `payload`: whole from memory, or streamed from its file.
    pub fn payload(payload: Payload) -> Self {
        if let Payload::Memory(bytes) = payload {
            return Reply::Full(Full::new(bytes));
        }
        let remaining = payload.len();
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let mut next = Some(payload.reader());
        // Each piece is read on a blocking thread, which is given back
        // while the client takes its time: a slow reader holds no thread.
        // A failed read is sent on and ends the stream.
        tokio::spawn(async move {
            while let Some(mut reader) = next.take() {
                let read = tokio::task::spawn_blocking(move || {
                    let piece = reader.next_chunk();
                    (reader, piece)
                })
                .await;
                let piece = match read {
                    Ok((reader, Ok(Some(piece)))) => {
                        next = Some(reader);
                        Ok(piece)
                    }
                    Ok((_, Ok(None))) => return,
                    Ok((_, Err(e))) => Err(e),
                    Err(e) => Err(io::Error::other(e)),
                };
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        });
        Reply::Stream {
            pieces: rx,
            remaining,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Reply::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Reply::Stream { pieces, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                match pieces.poll_recv(cx) {
                    Poll::Ready(Some(Ok(piece))) => {
                        *remaining = remaining.saturating_sub(piece.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(piece))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    // The reader stopped early: the client must not take
                    // a short body for a whole one.
                    Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the state file ended early",
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Full(full) => full.is_end_stream(),
            Reply::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Full(full) => full.size_hint(),
            Reply::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
