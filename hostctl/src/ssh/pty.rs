//! A pty channel whose output is always drained.
//!
//! russh delivers every channel's data from one connection loop through a bounded
//! queue per channel. A console nobody reads for a while (a VM booting while the next
//! one is being launched, a guest's console while the host's test shell runs) fills
//! its queue, and then the loop blocks: every other channel on the connection (commands,
//! SFTP, other consoles) stalls with it. So each pty gets a pump task that moves its
//! output into an unbounded buffer at once; readers take it from there at their pace.
//! Console output is small next to memory (a chatty boot is a few hundred KiB).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use russh::client::Msg;
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// The byte stream of a pty channel: reads come from the pump's buffer, writes go to
/// the channel. Dropping it closes the channel (the remote side sees a hang-up).
pub struct PtyStream {
    output: mpsc::UnboundedReceiver<Bytes>,
    /// The rest of a chunk a reader did not take whole.
    leftover: Bytes,
    input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl PtyStream {
    pub(super) fn new(mut channel: Channel<Msg>) -> Self {
        let input = Box::pin(channel.make_writer());
        let (sender, output) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = channel.wait() => match message {
                        Some(ChannelMsg::Data { data }) => {
                            if sender.send(Bytes::copy_from_slice(&data)).is_err() {
                                break;
                            }
                        }
                        // Exit status, EOF, window changes: the console sees the
                        // channel close when the command ends.
                        Some(_) => {}
                        None => return,
                    },
                    () = sender.closed() => break,
                }
            }
            // The reader is gone: hang up.
            let _ = channel.close().await;
        });
        Self {
            output,
            leftover: Bytes::new(),
            input,
        }
    }
}

impl AsyncRead for PtyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.leftover.is_empty() {
            match self.output.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.leftover = chunk,
                // The channel closed: end of stream.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let take = self.leftover.len().min(buf.remaining());
        let chunk = self.leftover.split_to(take);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PtyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.input.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.input.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.input.as_mut().poll_shutdown(cx)
    }
}
