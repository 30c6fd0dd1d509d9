//! Operator commands through the library: silence, acknowledge, and what a command that
//! cannot be applied produces.

use crate::common;

use forewarn::Output;
use serde_json::Value;

/// Pushes the scenario's readings with `ts` in `[from, to)` seconds and waits for them.
async fn push(h: &forewarn::PipelineHandle, from: i64, to: i64) {
    for (i, (t, p)) in common::lifecycle_messages().into_iter().enumerate() {
        let s = i as i64 / 3;
        if (from..to).contains(&s) {
            h.push_json(&t, p).await.unwrap();
        }
    }
    h.flush().await.unwrap();
}

fn drain(rx: &mut tokio::sync::mpsc::Receiver<Output>) -> Vec<Output> {
    let mut v = Vec::new();
    while let Ok(o) = rx.try_recv() {
        v.push(o);
    }
    v
}

fn state_of<'a>(outs: &'a [Output], device: &str) -> Option<&'a forewarn::DeviceState> {
    outs.iter().rev().find_map(|o| match o {
        Output::State { state, .. } if state.device == device => Some(state),
        _ => None,
    })
}

#[tokio::test]
async fn silence_suppresses_transitions_but_keeps_the_state() {
    let (h, mut rx) = common::lifecycle_pipeline().await.start();
    push(&h, 0, 25).await;
    drain(&mut rx);
    h.command(
        "d2",
        br#"{"action": "silence", "by": "ann", "for": "1 hour"}"#.to_vec(),
    )
    .await
    .unwrap();
    // Commands that cannot be applied are dead letters with a reason.
    h.command("d2", b"{\"action\": \"mute\"}".to_vec())
        .await
        .unwrap();
    h.command("zz", br#"{"action": "acknowledge", "by": "ann"}"#.to_vec())
        .await
        .unwrap();
    h.command("d1", br#"{"action": "acknowledge", "by": "ann"}"#.to_vec())
        .await
        .unwrap();
    h.command(
        "d1",
        br#"{"action": "silence", "by": "ann", "for": "soon"}"#.to_vec(),
    )
    .await
    .unwrap();
    h.flush().await.unwrap();
    let outs = drain(&mut rx);
    let confirmed = state_of(&outs, "d2").expect("the silence is confirmed on d2's state");
    assert!(confirmed.silenced_until.is_some());
    let reasons: Vec<&str> = outs
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter { topic, letter } => {
                assert_eq!(topic, "forewarn/deadletter/command");
                Some(letter.reason.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            "bad_command",
            "unknown_device",
            "nothing_to_acknowledge",
            "bad_command"
        ]
    );

    push(&h, 25, 120).await;
    let stats = h.finish().await.unwrap();
    drop(h);
    let mut outs = drain(&mut rx);
    while let Some(o) = rx.recv().await {
        outs.push(o);
    }
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Transition { .. })),
        "a silenced device's episode is not published"
    );
    assert_eq!(stats.transitions_silenced, 2, "{stats:?}");
    assert_eq!(stats.commands, 1);
    // Its state still follows the episode: raised (warning), then cleared (ok).
    let d2: Vec<&str> = outs
        .iter()
        .filter_map(|o| match o {
            Output::State { state, .. } if state.device == "d2" => Some(state.state),
            _ => None,
        })
        .map(|h| match h {
            forewarn::Health::Ok => "ok",
            forewarn::Health::Warning => "warning",
            forewarn::Health::Alarm => "alarm",
        })
        .collect();
    assert_eq!(d2, vec!["warning", "ok"]);
}

#[tokio::test]
async fn an_acknowledgement_lasts_until_the_episode_ends() {
    let (h, mut rx) = common::lifecycle_pipeline().await.start();
    push(&h, 0, 60).await;
    let outs = drain(&mut rx);
    let raised = outs
        .iter()
        .find_map(|o| match o {
            Output::Transition { message, .. } => Some(message.alert_id.clone()),
            _ => None,
        })
        .expect("d2 raised by 60 s");
    h.command("d2", br#"{"action": "acknowledge", "by": "ann"}"#.to_vec())
        .await
        .unwrap();
    h.flush().await.unwrap();
    let outs = drain(&mut rx);
    let ack = state_of(&outs, "d2")
        .and_then(|s| s.acknowledged.clone())
        .expect("confirmed");
    assert_eq!(ack.by, "ann");
    assert_eq!(ack.alert_ids, vec![raised]);
    let json: Value = serde_json::to_value(state_of(&outs, "d2").unwrap()).unwrap();
    assert_eq!(json["acknowledged"]["by"], "ann");

    push(&h, 60, 120).await;
    h.finish().await.unwrap();
    drop(h);
    let mut outs = drain(&mut rx);
    while let Some(o) = rx.recv().await {
        outs.push(o);
    }
    let last = state_of(&outs, "d2").unwrap();
    assert_eq!(last.state, forewarn::Health::Ok);
    assert!(last.acknowledged.is_none(), "cleared with the episode");
}
