//! The one forwarding of `AsyncRead` and `AsyncWrite` for the wrappers around the API's
//! connections: who made one ([`crate::access::listen::Identified`]) and the place it
//! holds under `--max-connections` ([`crate::connections::Limited`]). Each adds what it
//! needs through a [`Tap`]; reads and writes go through unchanged otherwise.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a wrapper does around its connection's reads and writes; by default nothing.
pub trait Tap {
    /// Before each read; an error fails the read (and so ends the connection).
    fn before_read(&self, _cx: &mut Context<'_>) -> io::Result<()> {
        Ok(())
    }
    /// After a read that delivered bytes.
    fn after_read(&self) {}
    /// Before each write; an error fails the write.
    fn before_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection `io` with `tap` attached.
pub struct Wrapped<IO, T> {
    io: IO,
    tap: T,
}

impl<IO, T> Wrapped<IO, T> {
    pub fn new(io: IO, tap: T) -> Self {
        Self { io, tap }
    }

    pub fn io(&self) -> &IO {
        &self.io
    }

    pub fn tap(&self) -> &T {
        &self.tap
    }
}

impl<IO: AsyncRead + Unpin, T: Tap + Unpin> AsyncRead for Wrapped<IO, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.tap.before_read(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.tap.after_read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin, T: Tap + Unpin> AsyncWrite for Wrapped<IO, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.tap.before_write() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.tap.before_write() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
