//! PullImage (additive server-streaming RPC): progress messages then one `done` message with
//! reference and digest; a missing image ends the stream with NOT_FOUND; bad input is refused.

use esb_proto::v1;
use tokio_stream::StreamExt;
use tonic::Code;

use super::harness::Agent;

#[tokio::test]
async fn pull_streams_progress_then_the_digest() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let mut s = c
        .pull_image(v1::PullImageRequest {
            image: " esb/fn:1 ".into(),
            owner_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut msgs = Vec::new();
    while let Some(m) = s.next().await {
        msgs.push(m.unwrap());
    }
    let last = msgs.pop().unwrap();
    assert!(last.done, "{last:?}");
    assert_eq!(last.reference, "registry.test/esb/fn:1");
    assert_eq!(last.digest, "sha256:fake");
    assert!(last.pulled);
    assert!(!msgs.is_empty(), "progress before the end");
    assert!(msgs.iter().all(|m| !m.done && m.layers_total == 2));
    let p = msgs.last().unwrap();
    assert_eq!((p.layers_done, p.bytes_done, p.bytes_total), (2, 200, 200));

    let mut s = c
        .pull_image(v1::PullImageRequest {
            image: "missing/x".into(),
            owner_id: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(m) = s.next().await {
        last = Some(m);
    }
    let e = last.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    for bad in ["", "a b", &"x".repeat(5000)] {
        let e = c
            .pull_image(v1::PullImageRequest {
                image: bad.to_string(),
                owner_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
}
