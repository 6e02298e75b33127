//! Watch streams: pull agents without the wait. A pull agent holds one long-lived
//! `Fleet.Watch` stream; when an order is queued for it (or the coordinator wants a fresh
//! status, as at the end of a canary soak) the coordinator says so on that stream and the
//! agent polls at once. Nothing an order carries travels here: the poll that follows is the
//! same signed, floor-checked hand-out as a scheduled one, so a watch can only make an agent
//! poll sooner, never make it take anything it would not have taken.
//!
//! One entry per agent: a `tokio::sync::watch` sender whose value counts the nudges (several
//! nudges before the agent reads coalesce into one poll). A stream ends when the agent goes
//! away, is revoked or re-enrolls, when the agent opens another (after a renewal, or when
//! it took the old one's link for dead: the newest replaces the entry), or when the
//! certificate it was opened with expires.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use dockfra_common::proto;

use super::{AgentPeer, Coordinator};

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

/// Why an agent is told to poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// The greeting: the stream is up (the agent polls once to catch up).
    Watching,
    /// An order was queued for it.
    Order,
    /// The coordinator wants its status now.
    Status,
}

impl Nudge {
    fn as_str(self) -> &'static str {
        match self {
            Nudge::Watching => "watching",
            Nudge::Order => "order",
            Nudge::Status => "status",
        }
    }
}

struct Entry {
    tx: watch::Sender<(u64, Nudge)>,
}

/// The agents holding a watch stream (see the module doc).
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, Entry>>,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver for `agent`'s nudges. It replaces the entry, which ends the agent's older
    /// streams: an agent holds one, and opens a new one after a renewal or when it takes the
    /// old one's link for dead (a link that died silently looks alive from here until TCP
    /// gives up).
    fn subscribe(&self, agent: &str) -> watch::Receiver<(u64, Nudge)> {
        let (tx, rx) = watch::channel((0, Nudge::Watching));
        self.lock().insert(agent.to_string(), Entry { tx });
        rx
    }

    /// Tell `agent` to poll now. False when it holds no stream.
    pub fn nudge(&self, agent: &str, why: Nudge) -> bool {
        let mut map = self.lock();
        let Some(e) = map.get(agent) else { return false };
        if e.tx.receiver_count() == 0 {
            map.remove(agent);
            return false;
        }
        e.tx.send_modify(|(n, w)| {
            *n += 1;
            *w = why;
        });
        true
    }

    /// End `agent`'s streams (revoked, or enrolled again).
    pub fn drop_agent(&self, agent: &str) {
        self.lock().remove(agent);
    }

    /// Does `agent` hold a stream now?
    pub fn watching(&self, agent: &str) -> bool {
        self.lock().get(agent).is_some_and(|e| e.tx.receiver_count() > 0)
    }

    /// How many agents hold a stream now.
    pub fn count(&self) -> usize {
        self.lock().values().filter(|e| e.tx.receiver_count() > 0).count()
    }
}

impl Coordinator {
    /// Tell `agent` to poll now, if it watches.
    pub(super) fn nudge(&self, agent: &str, why: Nudge) -> bool {
        self.inner.watchers.nudge(agent, why)
    }

    /// Does `agent` hold a watch stream now?
    pub(super) fn watching(&self, agent: &str) -> bool {
        self.inner.watchers.watching(agent)
    }

    pub(super) fn watchers(&self) -> &Watchers {
        &self.inner.watchers
    }

    /// `Fleet.Watch`: refused for an agent none of whose targets is a pull target that
    /// watches (`agent: {mode: pull, watch: true}`, the default); it polls then.
    /// With `keepalive_events` (the agent asked for them) an idle stream carries a
    /// "keepalive" event every `agent.keepalive` (the shortest of the agent's watching
    /// targets): one small write the agent answers with a TCP ACK only, which keeps NAT
    /// mappings open and tells the agent its link is alive, where pings would cost a frame
    /// each way.
    pub(super) fn open_watch(&self, peer: AgentPeer, keepalive_events: bool) -> Result<WatchStream, Status> {
        let projects = self.projects()?;
        let mut targets = projects.of_agent(&peer.target).map(|(_, t)| t).peekable();
        if targets.peek().is_none() {
            return Err(Status::not_found(format!("agent {:?} serves no target of this coordinator", peer.target)));
        }
        let keepalive = targets
            .filter(|t| t.agent.mode == dockfra_common::config::Mode::Pull && t.agent.watch)
            .map(|t| t.agent.keepalive)
            .min();
        let Some(keepalive) = keepalive else {
            return Err(Status::failed_precondition(format!(
                "agent {:?} does not watch (its targets are push, or set agent.watch: false): it polls",
                peer.target
            )));
        };
        let mut rx = self.inner.watchers.subscribe(&peer.target);
        let left = (peer.not_after_unix - dockfra_common::now_unix() as i64).max(0) as u64;
        let (tx, out) = mpsc::channel(1);
        tokio::spawn(async move {
            let expired = tokio::time::sleep(Duration::from_secs(left));
            tokio::pin!(expired);
            // Far off for an agent that pings by itself.
            let every = if keepalive_events { keepalive } else { Duration::from_secs(86_400 * 365) };
            let quiet = tokio::time::sleep(every);
            tokio::pin!(quiet);
            let greeting = proto::WatchEvent {
                reason: Nudge::Watching.as_str().into(),
                keepalive_ms: if keepalive_events { keepalive.as_millis() as u64 } else { 0 },
            };
            let mut next = Some(greeting);
            loop {
                if let Some(ev) = next.take() {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                    quiet.as_mut().reset(tokio::time::Instant::now() + every);
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return; // revoked, enrolled again, or replaced by a newer certificate
                        }
                        let why = rx.borrow_and_update().1;
                        next = Some(proto::WatchEvent { reason: why.as_str().into(), keepalive_ms: 0 });
                    }
                    _ = &mut quiet => next = Some(proto::WatchEvent { reason: "keepalive".into(), keepalive_ms: 0 }),
                    _ = &mut expired => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nudges_reach_subscribers_coalesce_and_end_with_the_entry() {
        let w = Watchers::default();
        assert!(!w.nudge("a", Nudge::Order), "nobody watches yet");
        let mut rx = w.subscribe("a");
        assert!(w.watching("a") && !w.watching("b"));
        assert_eq!(w.count(), 1);
        assert!(w.nudge("a", Nudge::Order));
        assert!(w.nudge("a", Nudge::Status));
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), (2, Nudge::Status), "two nudges, one wake-up, the last reason");
        // A new stream (under a renewed certificate, say) replaces the entry: the old one ends.
        let mut rx2 = w.subscribe("a");
        assert!(rx.changed().await.is_err());
        assert!(w.watching("a"));
        // And again (the agent gave the old link up for dead).
        let _rx3 = w.subscribe("a");
        assert!(rx2.changed().await.is_err());
        assert!(w.watching("a") && w.count() == 1);
        w.drop_agent("a");
        assert!(!w.watching("a") && w.count() == 0);
    }

    #[test]
    fn an_agent_whose_streams_all_closed_is_not_watching() {
        let w = Watchers::default();
        let rx = w.subscribe("a");
        drop(rx);
        assert!(!w.watching("a"));
        assert!(!w.nudge("a", Nudge::Order));
        assert_eq!(w.count(), 0);
    }
}
