//! `hv events`: follows hvd's event log, one line per event (or the raw JSON lines).

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use api::{Event, EventKind, EventsQuery};
use client::Client;

use crate::output::Format;

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Only these kinds (repeat or comma-separate): state-changed, operation, network, pool,
    /// volume, snapshot, control, audit, defined, undefined, updated, reset.
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// Only events about this VM.
    #[arg(long)]
    vm: Option<String>,
    /// First replay the retained events after this id (0: all retained).
    #[arg(long)]
    since: Option<u64>,
    /// table: one line per event; json: hvd's JSON, one event per line.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn run(c: &Client, a: EventsArgs) -> Result<()> {
    let q = EventsQuery {
        since: a.since,
        types: (!a.types.is_empty()).then(|| a.types.join(",")),
        vm: a.vm,
    };
    let reader = c.events_with(&q)?;
    let mut out = std::io::stdout().lock();
    for line in reader.lines() {
        let line = line.context("reading the event stream")?;
        if line.trim().is_empty() {
            continue;
        }
        match a.format {
            Format::Json => writeln!(out, "{line}")?,
            Format::Table | Format::Yaml => match serde_json::from_str::<Event>(&line) {
                Ok(ev) => writeln!(out, "{}", one_line(&ev))?,
                // A kind this hv does not know yet: show it as hvd sent it.
                Err(_) => writeln!(out, "{line}")?,
            },
        }
        // A closed pipe (`hv events | head`) ends the command.
        if out.flush().is_err() {
            break;
        }
    }
    Ok(())
}

/// `ID  HH:MM:SS.mmm  KIND  OBJECT  DETAILS` (UTC).
pub fn one_line(ev: &Event) -> String {
    let t = ev.time_ms % 86_400_000;
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    );
    let details = match &ev.kind {
        EventKind::StateChanged { state, reason } => match reason {
            Some(r) => format!("{state} ({r})"),
            None => state.to_string(),
        },
        EventKind::Control {
            holder,
            watchers,
            requests,
        } => format!(
            "holder {} watchers {} requests {}",
            holder.as_deref().unwrap_or("nobody"),
            watchers.len(),
            requests.len()
        ),
        EventKind::Operation { operation: o } => {
            let mut s = format!("{} {} {}", o.id, o.kind, o.status);
            if let Some(p) = o.progress_percent {
                s.push_str(&format!(" {p:.0}%"));
            }
            if let Some(e) = &o.error {
                s.push_str(&format!(": {e}"));
            }
            s
        }
        EventKind::Network { change, .. }
        | EventKind::Pool { change, .. }
        | EventKind::Volume { change, .. } => change_word(*change),
        EventKind::Snapshot { snapshot, change } => format!("{snapshot} {}", change_word(*change)),
        EventKind::Audit {
            principal,
            action,
            result,
            ..
        } => format!("{principal} {action}: {result}"),
        EventKind::Gap { oldest } => {
            format!("events before {oldest} are no longer retained; some were missed")
        }
        EventKind::Defined | EventKind::Undefined | EventKind::Updated | EventKind::Reset => {
            String::new()
        }
    };
    let object = match &ev.kind {
        EventKind::Gap { .. } => "-".to_string(),
        EventKind::Audit { object, .. } => object.clone(),
        _ => ev.object(),
    };
    let id = if ev.id == 0 {
        "-".to_string()
    } else {
        ev.id.to_string()
    };
    format!("{id}  {time}  {:<13} {object}  {details}", ev.kind.name())
        .trim_end()
        .to_string()
}

fn change_word(c: api::Change) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_names_the_object_and_what_happened() {
        let ev = Event {
            id: 12,
            time_ms: 3_723_004,
            vm: String::new(),
            kind: EventKind::Network {
                network: "lan".into(),
                change: api::Change::Started,
            },
        };
        assert_eq!(
            one_line(&ev),
            "12  01:02:03.004  network       network/lan  started"
        );
    }
}
