//! Shared helpers of the real-dockerd tests: per-test identity, settings, a cleanup guard,
//! raw daemon access and a plain HTTP invoke of a worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use esb_docker::DockerRuntime;
use esb_docker::DockerSettings;
use esb_runtime::EnsureRequest;
use esb_runtime::settings::CommonSettings;
use esb_testkit::DevEnv;

pub use esb_testkit::scenarios::{invoke, invoke_once};

/// One test's world: its brand (`esbt-dk-<n>`), settings and the dev env.
pub struct Ctx {
    pub env: DevEnv,
    pub brand: String,
    pub common: CommonSettings,
    pub docker: DockerSettings,
    pub raw: Docker,
    _guard: Guard,
}

impl Ctx {
    /// Settings for test `n`; removes leftovers of an earlier run of the same test first.
    pub async fn new(env: DevEnv, n: u32) -> anyhow::Result<Self> {
        let brand = format!("esbt-dk-{n}");
        let host = env.docker_host.clone().context("docker host")?;
        let raw = Docker::connect_with_unix(&host, 120, bollard::API_DEFAULT_VERSION)?;
        let common =
            esb_testkit::common_settings(&env, &brand, "test", std::env::temp_dir().join(&brand));
        let docker = DockerSettings {
            host: Some(host),
            network: env.docker_network.clone().context("docker network")?,
            firewall: None,
        };
        remove_brand(&raw, &brand).await;
        ensure_local_image(&raw, env.worker_image.as_deref().unwrap_or_default()).await?;
        Ok(Self {
            _guard: Guard {
                raw: raw.clone(),
                brand: brand.clone(),
            },
            env,
            brand,
            common,
            docker,
            raw,
        })
    }

    pub async fn runtime(&self) -> anyhow::Result<Arc<DockerRuntime>> {
        Ok(Arc::new(
            DockerRuntime::connect(self.common.clone(), self.docker.clone()).await?,
        ))
    }

    pub fn image(&self) -> String {
        self.env.worker_image.clone().unwrap_or_default()
    }

    pub fn request(&self, function: &str) -> EnsureRequest {
        EnsureRequest {
            function_name: function.to_string(),
            image: self.image(),
            env: BTreeMap::from([(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_string(),
                "512".to_string(),
            )]),
            owner_id: "owner-1".to_string(),
        }
    }

    /// Every container (any state) carrying this test's `created_by` label.
    pub async fn containers(&self) -> anyhow::Result<Vec<bollard::models::ContainerSummary>> {
        containers_of(&self.raw, &self.brand).await
    }
}

async fn containers_of(
    raw: &Docker,
    brand: &str,
) -> anyhow::Result<Vec<bollard::models::ContainerSummary>> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("created_by={brand}-agent")],
        )])),
        ..Default::default()
    };
    Ok(raw.list_containers(Some(opts)).await?)
}

/// Some tests tag the worker image locally: make sure the daemon has it.
async fn ensure_local_image(raw: &Docker, image: &str) -> anyhow::Result<()> {
    if raw.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let (repo, tag) = image.rsplit_once(':').context("worker image without tag")?;
    let opts = bollard::query_parameters::CreateImageOptions {
        from_image: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let mut pull = raw.create_image(Some(opts), None, None);
    while let Some(item) = futures::StreamExt::next(&mut pull).await {
        item?;
    }
    Ok(())
}

async fn remove_brand(raw: &Docker, brand: &str) {
    if let Ok(list) = containers_of(raw, brand).await {
        for c in list {
            if let Some(id) = c.id {
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = raw.remove_container(&id, Some(opts)).await;
            }
        }
    }
}

/// Removes every container of the test's brand when the test ends, even by panic.
struct Guard {
    raw: Docker,
    brand: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let raw = self.raw.clone();
        let brand = self.brand.clone();
        // Drop cannot await; a separate thread with its own runtime does the async cleanup.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove_brand(&raw, &brand));
            }
        })
        .join();
    }
}
