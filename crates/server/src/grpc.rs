//! Thin tonic handlers: validate/convert → call the core → convert back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_proto::v1;
use esb_proto::v1::agent_service_server::AgentService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::invoke::{ReportCell, TrailerReport};
use crate::rpc::RpcContext;
use crate::service::Core;

/// Margin so our own deadline fires before tonic's (which would answer CANCELLED).
const DEADLINE_MARGIN: Duration = Duration::from_millis(10);

pub struct Grpc {
    pub(crate) core: Arc<Core>,
}

fn ctx<T>(req: &Request<T>) -> Arc<RpcContext> {
    req.extensions()
        .get::<Arc<RpcContext>>()
        .cloned()
        .unwrap_or_default()
}

#[tonic::async_trait]
impl AgentService for Grpc {
    async fn ensure_container(
        &self,
        request: Request<v1::EnsureContainerRequest>,
    ) -> Result<Response<v1::WorkerInfo>, Status> {
        let ctx = ctx(&request);
        let req = convert::ensure_request(request.into_inner())?;
        ctx.set_owner(&req.owner_id);
        ctx.authorize(&req.owner_id)?;
        let worker = self.core.ensure(req).await?;
        ctx.set_container(&worker.id);
        Ok(Response::new(convert::worker_info(&worker)))
    }

    async fn destroy_container(
        &self,
        request: Request<v1::DestroyContainerRequest>,
    ) -> Result<Response<v1::DestroyContainerResponse>, Status> {
        let ctx = ctx(&request);
        let r = request.into_inner();
        let t = convert::target(&r.container_id, &r.owner_id)?;
        ctx.set_target(&t);
        ctx.authorize(&t.owner_id)?;
        let success = self.core.destroy(t).await?;
        Ok(Response::new(v1::DestroyContainerResponse { success }))
    }

    async fn pause_container(
        &self,
        request: Request<v1::PauseContainerRequest>,
    ) -> Result<Response<v1::PauseContainerResponse>, Status> {
        let ctx = ctx(&request);
        let r = request.into_inner();
        let t = convert::target(&r.container_id, &r.owner_id)?;
        ctx.set_target(&t);
        ctx.authorize(&t.owner_id)?;
        self.core.pause(t).await?;
        Ok(Response::new(v1::PauseContainerResponse { success: true }))
    }

    async fn resume_container(
        &self,
        request: Request<v1::ResumeContainerRequest>,
    ) -> Result<Response<v1::ResumeContainerResponse>, Status> {
        let ctx = ctx(&request);
        let r = request.into_inner();
        let t = convert::target(&r.container_id, &r.owner_id)?;
        ctx.set_target(&t);
        ctx.authorize(&t.owner_id)?;
        self.core.resume(t).await?;
        Ok(Response::new(v1::ResumeContainerResponse { success: true }))
    }

    async fn list_containers(
        &self,
        request: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let ctx = ctx(&request);
        let owner = convert::owner(&request.get_ref().owner_id)?;
        ctx.set_owner(&owner);
        ctx.authorize(&owner)?;
        let listed = self.core.list(&owner).await?;
        Ok(Response::new(convert::list_response(listed)))
    }

    async fn get_container_metrics(
        &self,
        request: Request<v1::GetContainerMetricsRequest>,
    ) -> Result<Response<v1::GetContainerMetricsResponse>, Status> {
        let ctx = ctx(&request);
        let r = request.into_inner();
        let t = convert::target(&r.container_id, &r.owner_id)?;
        ctx.set_target(&t);
        ctx.authorize(&t.owner_id)?;
        let m = self.core.metrics(t).await?;
        Ok(Response::new(convert::container_metrics(m)))
    }

    async fn invoke_worker(
        &self,
        request: Request<v1::InvokeWorkerRequest>,
    ) -> Result<Response<v1::InvokeWorkerResponse>, Status> {
        let ctx = ctx(&request);
        let grpc_deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| Instant::now() + d.saturating_sub(DEADLINE_MARGIN));
        let default = self.core.invoker.settings().default_timeout;
        let call = convert::invoke_request(request.into_inner(), default)?;
        ctx.set_target(&call.target);
        ctx.authorize(&call.target.owner_id)?;
        let report = ReportCell::new();
        match self.core.invoke(call, grpc_deadline, &report).await {
            Ok(reply) => {
                let mut resp = Response::new(convert::invoke_response(reply));
                if let Some(r) = report.into_inner() {
                    resp.extensions_mut().insert(TrailerReport(Arc::new(r)));
                }
                Ok(resp)
            }
            Err(e) => {
                let mut status = Status::from(e);
                if let Some(r) = report.get() {
                    r.attach_to(&mut status);
                }
                Err(status)
            }
        }
    }

    async fn get_capabilities(
        &self,
        _request: Request<v1::GetCapabilitiesRequest>,
    ) -> Result<Response<v1::Capabilities>, Status> {
        Ok(Response::new(convert::capabilities(&self.core)))
    }

    type PullImageStream = tonic::codegen::BoxStream<v1::PullImageProgress>;

    async fn set_standby(
        &self,
        request: Request<v1::SetStandbyRequest>,
    ) -> Result<Response<v1::SetStandbyResponse>, Status> {
        let ctx = ctx(&request);
        let r = request.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| crate::status::ApiError::InvalidArgument("spec is required".into()))?;
        let req = convert::ensure_request(spec)?;
        ctx.set_owner(&req.owner_id);
        ctx.authorize(&req.owner_id)?;
        let ready = self.core.set_standby(&req, r.count)?;
        Ok(Response::new(v1::SetStandbyResponse { ready }))
    }

    async fn pull_image(
        &self,
        request: Request<v1::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let ctx = ctx(&request);
        let r = request.into_inner();
        let image = convert::image(&r.image)?;
        if !r.owner_id.trim().is_empty() {
            ctx.set_owner(r.owner_id.trim());
        }
        let rx = self.core.clone().pull_image(image);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(convert::pull_progress),
        )))
    }

    type WorkerLogsStream = tonic::codegen::BoxStream<v1::WorkerLogsChunk>;

    async fn worker_logs(
        &self,
        request: Request<v1::WorkerLogsRequest>,
    ) -> Result<Response<Self::WorkerLogsStream>, Status> {
        let ctx = ctx(&request);
        let r = request.into_inner();
        let t = convert::target(&r.container_id, &r.owner_id)?;
        ctx.set_target(&t);
        ctx.authorize(&t.owner_id)?;
        let rx = self
            .core
            .clone()
            .worker_logs(t, r.tail_bytes, r.follow)
            .await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(convert::log_chunk),
        )))
    }
}

/// Parses a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10q"), None);
    }
}
