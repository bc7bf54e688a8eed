//! `hv control NAME [take|request|release|give USER]`: shared control of a VM's consoles.

use anyhow::Result;
use api::{ControlAction, ControlState};
use clap::Subcommand;

use crate::output::{structured, table, Format};

#[derive(Subcommand, Debug)]
pub enum ControlCmd {
    /// Take control (when free; from anyone as an admin of the VM).
    Take,
    /// Ask the holder for control (takes it when free).
    Request,
    /// Let go of control.
    Release,
    /// Give control to USER, who watches a console of the VM and may type.
    Give { user: String },
}

pub fn run(c: &client::Client, name: &str, cmd: Option<ControlCmd>, format: Format) -> Result<()> {
    let state = match cmd {
        None => c.control(name)?,
        Some(ControlCmd::Take) => c.control_act(name, ControlAction::Take, None)?,
        Some(ControlCmd::Request) => c.control_act(name, ControlAction::Request, None)?,
        Some(ControlCmd::Release) => c.control_act(name, ControlAction::Release, None)?,
        Some(ControlCmd::Give { user }) => c.control_act(name, ControlAction::Give, Some(&user))?,
    };
    if !structured(format, &state)? {
        print!("{}", render(&state));
    }
    Ok(())
}

fn render(s: &ControlState) -> String {
    let mut out = format!(
        "control of {}: {}\n",
        s.vm,
        match &s.holder {
            Some(h) if s.you.holds => format!("held by you ({h})"),
            Some(h) => format!("held by {h}"),
            None => "free".to_string(),
        }
    );
    if !s.requests.is_empty() {
        out.push_str(&format!("requests: {}\n", s.requests.join(", ")));
    }
    out.push_str(&format!(
        "released after {}s without input from the holder\n",
        s.idle_timeout_s
    ));
    if !s.you.can_control {
        out.push_str("you may only watch this VM's consoles\n");
    }
    if !s.watchers.is_empty() {
        let rows: Vec<Vec<String>> = s
            .watchers
            .iter()
            .map(|w| {
                vec![
                    w.user.clone(),
                    match w.kind {
                        api::ConsoleKind::Vnc => "vnc".into(),
                        api::ConsoleKind::Serial => "serial".into(),
                    },
                ]
            })
            .collect();
        out.push_str(&table(&["WATCHER", "CONSOLE"], &rows));
    }
    out
}
