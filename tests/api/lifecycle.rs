//! The lifecycle is enforced where rows are written: a worker's outcome, a callback's effect and a
//! requeue each leave a row alone when its state does not allow the move (`outbox::lifecycle::allowed`).

use std::time::Duration;

use ebg_notify::outbox::callbacks::apply_callback;
use ebg_notify::outbox::lifecycle::{Effect, Requeue, Status};
use ebg_notify::outbox::{Claimed, Transition, finish_try, requeue};
use uuid::Uuid;

use crate::helpers::*;

const TEMPLATE_ID: &str = "2f1c6b6e-8a3f-4d0c-9a55-1b0b7a8c9d10";

/// A row in `status` that holds a lease token (as a row leased before a callback moved it would).
async fn row_in(app: &TestApp, status: &str) -> Claimed {
    let (id, lease_token) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "insert into notifications (id, channel, participant_id, template_id, status, attempts, sends, lease_token,
             va_notify_id)
         values ($1, 'email', '796111863', $2, $3, 1, 1, $4, gen_random_uuid())",
    )
    .bind(id)
    .bind(TEMPLATE_ID)
    .bind(status)
    .bind(lease_token)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("insert into notification_attempts (notification_id, attempt) values ($1, 1)")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    Claimed {
        id,
        channel: "email".into(),
        participant_id: "796111863".into(),
        template_id: TEMPLATE_ID.into(),
        attempts: 1,
        lease_token,
        sends: 1,
        attempts_before_send: 0,
        in_doubt_since: None,
    }
}

/// Everything about a row that a refused move must leave as it was.
async fn snapshot(app: &TestApp, id: Uuid) -> (String, Option<String>, i32, i32, i32, Option<String>) {
    sqlx::query_as(
        "select n.status, n.status_reason, n.attempts, n.sends, n.attempts_before_send,
                (select a.outcome from notification_attempts a where a.notification_id = n.id and a.attempt = 1)
         from notifications n where n.id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_worker_outcome_is_written_only_to_a_row_still_sending() {
    let app = app().spawn().await;
    let sent = Transition::Sent { va_notify_id: Uuid::new_v4() };

    // Same lease token, but a callback already moved the row on: the outcome must not undo that.
    let delivered = row_in(&app, "delivered").await;
    let before = snapshot(&app, delivered.id).await;
    assert!(!finish_try(&app.db, &delivered, None, &sent, None).await.unwrap(), "refused");
    assert_eq!(snapshot(&app, delivered.id).await, before);

    // The same outcome on a leased row is written (the refusal above is the lifecycle's, not the SQL's).
    let sending = row_in(&app, "sending").await;
    assert!(finish_try(&app.db, &sending, None, &sent, None).await.unwrap());
    assert_eq!(app.status_of(sending.id).await.0, "sent");
}

#[tokio::test]
async fn a_callback_effect_the_lifecycle_does_not_allow_changes_nothing() {
    let app = app().spawn().await;
    let mut conn = app.db.acquire().await.unwrap();
    let delay = Duration::from_secs(60);

    let delivered = row_in(&app, "delivered").await;
    let before = snapshot(&app, delivered.id).await;
    for effect in [Effect::Move(Status::PermanentFailure), Effect::Dead, Effect::Resend] {
        let applied = apply_callback(&mut conn, delivered.id, effect, Some("late".into()), None, delay).await.unwrap();
        assert!(!applied, "{effect:?} on a delivered row");
        assert_eq!(snapshot(&app, delivered.id).await, before, "{effect:?}");
    }

    let sent = row_in(&app, "sent").await;
    assert!(apply_callback(&mut conn, sent.id, Effect::Move(Status::Delivered), None, None, delay).await.unwrap());
    assert_eq!(app.status_of(sent.id).await.0, "delivered");
}

#[tokio::test]
async fn a_requeue_never_takes_a_row_the_lifecycle_does_not_let_go_back() {
    let app = app().spawn().await;
    let delivered = row_in(&app, "delivered").await;
    let before = snapshot(&app, delivered.id).await;
    let mut replay = Requeue::replay(Status::Dead);
    replay.from.push(Status::Delivered);
    assert!(requeue(&app.db, &[delivered.id], &replay).await.unwrap().is_empty());
    assert_eq!(snapshot(&app, delivered.id).await, before);

    let dead = row_in(&app, "dead").await;
    assert_eq!(requeue(&app.db, &[dead.id], &replay).await.unwrap(), [dead.id]);
    assert_eq!(app.status_of(dead.id).await.0, "queued");
}
