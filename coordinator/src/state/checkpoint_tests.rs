//! A finetune's checkpoints: the latest is journalled, survives a restart, rides the re-queued
//! task's offer, and the resumed run's result names both agents.
use super::core::*;
use super::tests::{plan, reg, settings};
use crate::journal::{ExperimentJournal, Restored};
use crate::outcome::{TaskOutput, TrainingOutcome};
use shared::task::{AgentId, TaskId};
use std::time::Instant;

fn saved(step: u64) -> SavedCheckpoint {
    SavedCheckpoint {
        artifact: format!("e/ft-a1/checkpoint-{step}"),
        step,
        epoch: 0,
    }
}

fn resume_of(fx: &Effects) -> Option<Option<CheckpointRef>> {
    fx.to_agents.iter().find_map(|(_, _, m)| match m {
        ToAgent::Offer { resume, .. } => Some(resume.clone()),
        _ => None,
    })
}

#[test]
fn the_latest_checkpoint_survives_a_restart_and_the_resumed_result_names_both_agents() {
    let t0 = Instant::now();
    let mut core = Core::new(settings());
    let sa = core.register(reg("a", 4000), t0).unwrap();
    core.submit(plan(), t0);
    assert_eq!(
        resume_of(&core.take_effects()),
        Some(None),
        "a first offer resumes nothing"
    );
    let r = TaskRef {
        experiment: crate::experiment::ExperimentId("e".into()),
        task: TaskId("finetune:SLM_X".into()),
        attempt: 1,
    };
    let a = AgentId("a".into());
    core.offer_reply(&a, sa, &r, OfferAnswer::Accept, t0)
        .unwrap();
    core.checkpoint(&a, sa, &r, saved(4), t0);
    // An older checkpoint announced late does not replace a newer one.
    core.checkpoint(&a, sa, &r, saved(2), t0);

    // What the journal holds, through its JSON form, read by a restarted coordinator.
    let journal = core.experiments[0].journal();
    let text = serde_json::to_string(&journal).unwrap();
    let journal: ExperimentJournal = serde_json::from_str(&text).unwrap();
    let mut core = Core::new(settings());
    core.restore(
        Restored {
            plan: plan(),
            state: journal,
            predictions: Default::default(),
        },
        t0,
    );
    let sb = core.register(reg("b", 4000), t0).unwrap();
    let resume = resume_of(&core.take_effects())
        .expect("re-offered")
        .expect("with a checkpoint");
    assert_eq!((resume.saved.step, resume.agent.0.as_str()), (4, "a"));

    let b = AgentId("b".into());
    let r = TaskRef { attempt: 2, ..r };
    core.offer_reply(&b, sb, &r, OfferAnswer::Accept, t0)
        .unwrap();
    // The resuming agent's own checkpoints become the latest; the result still names `a`'s.
    core.checkpoint(&b, sb, &r, saved(8), t0);
    let tr = TrainingOutcome {
        adapter_artifact: "e/ft-a2".into(),
        adapter_hash: "h".into(),
        steps: 10,
        epochs_run: 1,
        final_train_loss: 1.0,
        best_validation_loss: None,
        stopped_early: false,
        train_s: 1.0,
        load_s: 0.0,
        tokens_per_s: 1.0,
        peak_memory_mib: 1,
        device_name: "cpu".into(),
        curve: vec![],
        resumed: Some(shared::results::Resumed {
            resumed_from_step: 4,
            resumed_on_agent: String::new(),
            checkpoint_by_agent: String::new(),
        }),
    };
    let done = Outcome::Done(TaskOutput::Finetuned(tr));
    core.result(&b, sb, &r, done, t0).unwrap();
    let Some(TaskOutput::Finetuned(out)) = &core.experiments[0].tasks[0].output else {
        panic!("no output");
    };
    let resumed = out.resumed.as_ref().unwrap();
    assert_eq!(
        (
            resumed.resumed_from_step,
            resumed.resumed_on_agent.as_str(),
            resumed.checkpoint_by_agent.as_str()
        ),
        (4, "b", "a")
    );
}
