//! gRPC fixtures: the `echo.Echo` test service (tests/proto/echo.proto) served by tonic over
//! h2c, and a tonic client channel that reaches the proxy over TLS (ALPN h2) with a custom
//! connector, since tonic's own TLS features are not enabled.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Pki;

/// The generated messages, client and server.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("echo");
}

use pb::Msg;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

/// Big enough for the 8 MiB message test, with room for framing.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// How much earlier than the propagated deadline the test service gives up. Real servers
/// (grpc-go, grpc-java) answer DEADLINE_EXCEEDED when the deadline they received expires;
/// tonic's own timers answer CANCELLED on both sides, so the service enforces the deadline
/// itself and reserves this margin for its answer to win the race with the client's timer.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct EchoService;

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send + 'static>>;

fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let timeout = grpc_timeout(&req);
        let msg = req.into_inner();
        if msg.fail_code != 0 {
            return Err(Status::new(msg.fail_code.into(), msg.text));
        }
        if msg.sleep_ms > 0 {
            let sleep = tokio::time::sleep(Duration::from_millis(msg.sleep_ms));
            match timeout {
                Some(t) => {
                    let budget = t.saturating_sub(DEADLINE_MARGIN);
                    if tokio::time::timeout(budget, sleep).await.is_err() {
                        return Err(Status::deadline_exceeded("deadline expired at the backend"));
                    }
                }
                None => sleep.await,
            }
        }
        Ok(Response::new(msg))
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(&self, req: Request<Msg>) -> Result<Response<MsgStream>, Status> {
        let msg = req.into_inner();
        let items = (0..msg.count).map(move |i| {
            Ok(Msg {
                text: format!("{} {i}", msg.text),
                ..Msg::default()
            })
        });
        let tail = (msg.fail_code != 0).then(|| {
            Err(Status::new(
                msg.fail_code.into(),
                "failed after the messages",
            ))
        });
        let stream = futures_util::stream::iter(items.chain(tail));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn client_stream(&self, req: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
        let mut stream = req.into_inner();
        let (mut texts, mut count, mut bytes) = (Vec::new(), 0u32, 0usize);
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            texts.push(msg.text);
            count += 1;
            bytes += msg.payload.len();
        }
        Ok(Response::new(Msg {
            text: texts.join(","),
            count,
            sleep_ms: bytes as u64,
            ..Msg::default()
        }))
    }

    type BidiStream = MsgStream;

    async fn bidi(&self, req: Request<Streaming<Msg>>) -> Result<Response<MsgStream>, Status> {
        let stream = req.into_inner().map(|msg| {
            msg.map(|m| Msg {
                text: format!("echo {}", m.text),
                ..m
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A tonic `echo.Echo` server on h2c; stops when dropped.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcBackend {
    pub async fn start() -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = serve(listener, None).await;
        });
        GrpcBackend { addr, task }
    }
}

/// Serves the `echo.Echo` test service on h2c on `listener` until it fails; `max_streams`
/// sets SETTINGS_MAX_CONCURRENT_STREAMS (tonic's default when `None`). The [`GrpcBackend`]
/// fixture and `mc-bench grpc-backend` run it.
pub async fn serve(
    listener: TcpListener,
    max_streams: Option<u32>,
) -> Result<(), tonic::transport::Error> {
    let service = EchoServer::new(EchoService)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // TCP_NODELAY as on the proxy's side: a small echo waits for no ACK.
    let incoming = TcpListenerStream::new(listener).map(|tcp| {
        let tcp = tcp?;
        tcp.set_nodelay(true)?;
        Ok::<_, std::io::Error>(tcp)
    });
    tonic::transport::Server::builder()
        .max_concurrent_streams(max_streams)
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects TCP + TLS (ALPN h2) to the proxy for one SNI: tonic's connector.
#[derive(Clone)]
struct TlsConnector {
    proxy: SocketAddr,
    sni: String,
    config: Arc<rustls::ClientConfig>,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<Tls>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<Tls>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.proxy).await?;
            tcp.set_nodelay(true)?;
            let name =
                rustls::pki_types::ServerName::try_from(this.sni).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// An `echo.Echo` client reaching `sni` through the proxy at `proxy`, trusting `pki`.
pub async fn echo_client(
    proxy: SocketAddr,
    sni: &str,
    pki: &Pki,
) -> EchoClient<tonic::transport::Channel> {
    let config = pki.client_config_with(|c| c.alpn_protocols = vec![b"h2".to_vec()]);
    let connector = TlsConnector {
        proxy,
        sni: sni.to_owned(),
        config,
    };
    // `http://` although the connector speaks TLS: with tonic's own TLS compiled in (etcd-client
    // turns it on) an `https://` endpoint without tonic's TLS config is refused
    // (`HttpsUriWithoutTlsSupport`). Only the request's `:scheme` says `http`.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{sni}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}
