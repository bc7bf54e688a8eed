//! Watching hvd (issue 13): the event log and live figures of running VMs.

use std::io::{BufRead, BufReader};

use api::paths;

use crate::{decode, pct, Client, ClientError, Result};

impl Client {
    /// Live figures of a running VM.
    pub fn stats(&self, name: &str) -> Result<api::VmStats> {
        self.call("GET", &paths::vm_action(name, "stats"), None::<&()>)
    }

    /// Live figures of every running VM this caller may see.
    pub fn stats_all(&self) -> Result<Vec<api::VmStats>> {
        Ok(self
            .call::<api::StatsList>("GET", "/v1/stats", None::<&()>)?
            .vms)
    }

    /// The event stream from now on: one JSON event per line.
    pub fn events(&self) -> Result<impl BufRead> {
        self.events_with(&api::EventsQuery::default())
    }

    /// The event stream, filtered, resumed after `q.since` (a first `gap` record says when
    /// some are no longer retained): one JSON event per line.
    pub fn events_with(&self, q: &api::EventsQuery) -> Result<impl BufRead> {
        let mut query = Vec::new();
        if let Some(s) = q.since {
            query.push(format!("since={s}"));
        }
        if let Some(t) = &q.types {
            query.push(format!("type={}", pct(t)));
        }
        if let Some(v) = &q.vm {
            query.push(format!("vm={}", pct(v)));
        }
        let path = if query.is_empty() {
            paths::EVENTS.to_string()
        } else {
            format!("{}?{}", paths::EVENTS, query.join("&"))
        };
        let resp = self.send("GET", &path, None)?;
        if resp.status != 200 {
            return Err(match decode::<serde_json::Value>(resp) {
                Err(e) => e,
                Ok(_) => ClientError::Protocol("unexpected reply to GET /v1/events".into()),
            });
        }
        Ok(BufReader::new(resp.into_reader()))
    }
}
