//! The least a gRPC → HTTP/1.1 proxy does, as a floor for the agent's throughput ratio: a
//! tonic server whose InvokeWorker forwards the payload to the worker over one keep-alive
//! hyper connection per worker (the textbook client: the connection driven by a task of its
//! own) and answers status, headers and body. No auth, no worker table, no deadlines, no
//! report, no metrics, no logs. It runs on its own two-thread runtime, like the agent's on
//! this 2-core machine, so it competes for the CPU as the agent process does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use esb_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use esb_proto::v1::*;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{Mutex, oneshot};
use tonic::codegen::BoxStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

type Slot = Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>;

struct FloorProxy {
    workers: HashMap<String, (IpAddr, Slot)>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("floor proxy: InvokeWorker only"))
}

#[tonic::async_trait]
impl AgentService for FloorProxy {
    async fn invoke_worker(
        &self,
        req: Request<InvokeWorkerRequest>,
    ) -> Result<Response<InvokeWorkerResponse>, Status> {
        let r = req.into_inner();
        let (ip, slot) = self
            .workers
            .get(&r.container_id)
            .ok_or_else(|| Status::not_found("no such worker"))?;
        let addr = SocketAddr::new(*ip, 8080);
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            stream
                .set_nodelay(true)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            tokio::spawn(conn);
            *slot = Some(sender);
        }
        let Some(sender) = slot.as_mut() else {
            return Err(Status::internal("no connection"));
        };
        let http = http::Request::post("/2015-03-31/functions/function/invocations")
            .header(http::header::HOST, addr.to_string())
            .body(Full::new(Bytes::from(r.payload)))
            .map_err(|e| Status::internal(e.to_string()))?;
        sender
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = sender
            .send_request(http)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .to_bytes();
        let headers = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(Response::new(InvokeWorkerResponse {
            status_code: i32::from(parts.status.as_u16()),
            headers,
            body: body.to_vec(),
        }))
    }

    async fn ensure_container(
        &self,
        _: Request<EnsureContainerRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        unimplemented()
    }
    async fn destroy_container(
        &self,
        _: Request<DestroyContainerRequest>,
    ) -> Result<Response<DestroyContainerResponse>, Status> {
        unimplemented()
    }
    async fn pause_container(
        &self,
        _: Request<PauseContainerRequest>,
    ) -> Result<Response<PauseContainerResponse>, Status> {
        unimplemented()
    }
    async fn resume_container(
        &self,
        _: Request<ResumeContainerRequest>,
    ) -> Result<Response<ResumeContainerResponse>, Status> {
        unimplemented()
    }
    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        unimplemented()
    }
    async fn get_container_metrics(
        &self,
        _: Request<GetContainerMetricsRequest>,
    ) -> Result<Response<GetContainerMetricsResponse>, Status> {
        unimplemented()
    }
    async fn get_capabilities(
        &self,
        _: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<Capabilities>, Status> {
        unimplemented()
    }
    type WorkerLogsStream = BoxStream<WorkerLogsChunk>;
    async fn worker_logs(
        &self,
        _: Request<WorkerLogsRequest>,
    ) -> Result<Response<Self::WorkerLogsStream>, Status> {
        unimplemented()
    }
    type PullImageStream = BoxStream<PullImageProgress>;
    async fn pull_image(
        &self,
        _: Request<PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        unimplemented()
    }
    async fn set_standby(
        &self,
        _: Request<SetStandbyRequest>,
    ) -> Result<Response<SetStandbyResponse>, Status> {
        unimplemented()
    }
}

/// A running floor proxy; stopped (and its runtime's threads joined) on drop.
pub struct Floor {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Floor {
    /// Serves InvokeWorker for `workers` (container id, IP) on a free loopback port.
    pub fn start(workers: &[(String, IpAddr)]) -> anyhow::Result<Self> {
        let map = workers
            .iter()
            .map(|(id, ip)| (id.clone(), (*ip, Slot::default())))
            .collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = AgentServiceServer::new(FloorProxy { workers: map });
        // Its own runtime on threads of its own (a runtime cannot start inside the bench's).
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let _ = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
