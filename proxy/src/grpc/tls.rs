//! gRPC over TLS: a TCP accept loop that completes each handshake off the
//! loop (a slow client cannot stall others) and hands tonic the TLS streams,
//! with the same `TcpConnectInfo` a plaintext connection carries.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for tonic to take them.
const BACKLOG: usize = 128;

/// One accepted TLS connection.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts on `listener` (inside the runtime that calls it) and yields handshaken connections.
pub fn incoming(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> ReceiverStream<std::io::Result<TlsConn>> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            // tonic drops the stream when it drains: the socket closes with it.
            let accepted = tokio::select! {
                () = tx.closed() => break,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(remote) };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConn { stream, info })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(client = %remote, error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!(client = %remote, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
