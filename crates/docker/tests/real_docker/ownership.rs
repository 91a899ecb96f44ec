//! Scope: GC touches only managed containers of this brand+ENV (review P1-3); a new runtime
//! instance (agent restart) adopts running and paused workers.

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use esb_runtime::Runtime;

use crate::support::Ctx;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_containers_survive_gc() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 30).await?;
    let rt = ctx.runtime().await?;
    let identity = &ctx.common.identity;
    // Stopped (created, never started) containers: one without labels, one of another ENV,
    // and one of ours.
    let mut other_env = identity.worker_labels("f", "o");
    other_env.insert(identity.env_label_key(), "other".into());
    let cases: [(&str, HashMap<String, String>); 3] = [
        ("esbt-dk-30-foreign-nolabels", HashMap::new()),
        (
            "esbt-dk-30-foreign-otherenv",
            other_env.into_iter().collect(),
        ),
        (
            "esbt-dk-30-ours",
            identity.worker_labels("f", "o").into_iter().collect(),
        ),
    ];
    let mut ids = Vec::new();
    for (name, labels) in cases {
        let _ = ctx
            .raw
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        let c = ctx
            .raw
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.into()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(ctx.image()),
                    labels: Some(labels),
                    ..Default::default()
                },
            )
            .await?;
        ids.push(c.id);
    }
    let report = rt.gc().await;
    let survived = [
        ctx.raw
            .inspect_container(
                &ids[0],
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .is_ok(),
        ctx.raw
            .inspect_container(
                &ids[1],
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .is_ok(),
        ctx.raw
            .inspect_container(
                &ids[2],
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .is_ok(),
    ];
    for id in &ids[..2] {
        let _ = ctx
            .raw
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    let report = report?;
    assert_eq!(survived, [true, true, false]);
    assert_eq!(report.removed_workers, vec![ids[2].clone()]);
    // The foreign ones are invisible to every operation.
    assert!(rt.inspect(&ids[0]).await?.is_none());
    assert!(!rt.destroy(&ids[1]).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_workers() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 31).await?;
    let first = ctx.runtime().await?;
    esb_testkit::scenarios::adoption(first, &ctx.image(), || async {
        let rt: std::sync::Arc<dyn Runtime> = ctx.runtime().await?;
        Ok(rt)
    })
    .await?;
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}
