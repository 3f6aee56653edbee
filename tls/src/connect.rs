//! A connector (a `tower::Service<Uri>`) for hyper-util's pooled client and
//! tonic channels alike: TCP through hyper-util's `HttpConnector` (its
//! connect timeout, `TCP_NODELAY`), then, for an `https` URI, the TLS
//! handshake with the current [`ClientTls`] settings. A handshake that fails
//! is a connect error: the request was provably never sent.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use crate::client::ClientTls;

/// Plain TCP for `http` URIs, TLS for `https` ones.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: Option<Arc<ClientTls>>,
}

impl Connector {
    /// `tls`: the settings `https` URIs connect with; `None` refuses them.
    pub fn new(connect_timeout: Option<Duration>, tls: Option<Arc<ClientTls>>) -> Connector {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(connect_timeout);
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        Connector { tcp, tls }
    }
}

/// A connection made by [`Connector`].
pub enum Stream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is a kilobyte, a TCP stream a few words.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>, bool),
}

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_ready(cx).map_err(io::Error::other)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = match uri.scheme_str() {
            Some("https") => match &self.tls {
                Some(t) => Some(t.clone()),
                None => {
                    let e = io::Error::other(format!("{uri}: https without TLS settings"));
                    return Box::pin(async move { Err(e) });
                }
            },
            _ => None,
        };
        let host = uri.host().unwrap_or_default().to_string();
        let connecting = self.tcp.call(uri);
        Box::pin(async move {
            let tcp = connecting.await.map_err(io::Error::other)?.into_inner();
            match tls {
                None => Ok(Stream::Plain(TokioIo::new(tcp))),
                Some(tls) => {
                    let s = tls
                        .handshake(&host, tcp)
                        .await
                        .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {host}: {e}")))?;
                    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok(Stream::Tls(Box::new(TokioIo::new(s)), h2))
                }
            }
        })
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Tls(_, true) => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl Read for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s, _) => s.is_write_vectored(),
        }
    }
}
