//! The figures hv-bench reports, each with libvirt's figure on this machine and hv's target, and
//! the Markdown table they are printed as.

use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ms,
    MiB,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MiB => "MiB",
        }
    }

    /// A measured value, to 0.1.
    fn format(self, value: f64) -> String {
        format!("{value:.1} {}", self.name())
    }

    /// A reference value, as precise as it was given.
    fn format_ref(self, value: f64) -> String {
        format!("{value} {}", self.name())
    }
}

/// One reported figure: lower is better, and the median must be at most `target`.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub label: &'static str,
    pub unit: Unit,
    pub libvirt: f64,
    pub target: f64,
}

pub const START_COMMAND: Figure = Figure {
    label: "`start` command returns (`hv start NAME` process)",
    unit: Unit::Ms,
    libvirt: 324.0,
    target: 60.0,
};
pub const DEFINE: Figure = Figure {
    label: "define one VM (`hv create NAME ...` process)",
    unit: Unit::Ms,
    libvirt: 17.6,
    target: 8.0,
};
pub const LIST_1000: Figure = Figure {
    label: "`hv list --all` with 1,000 VMs defined",
    unit: Unit::Ms,
    libvirt: 122.0,
    target: 20.0,
};
pub const INFO_1000: Figure = Figure {
    label: "`hv info NAME` with 1,000 VMs defined",
    unit: Unit::Ms,
    libvirt: 17.5,
    target: 8.0,
};
pub const RSS_1000: Figure = Figure {
    label: "daemon RSS with 1,000 VMs defined",
    unit: Unit::MiB,
    libvirt: 33.0,
    target: 16.0,
};
pub const POWEROFF: Figure = Figure {
    label: "guest power-off → state shutoff",
    unit: Unit::Ms,
    libvirt: 220.0,
    target: 30.0,
};
pub const ACPI_SHUTDOWN: Figure = Figure {
    label: "ACPI shutdown → shutoff (`hv shutdown NAME` process)",
    unit: Unit::Ms,
    libvirt: 255.0,
    target: 150.0,
};
pub const DAEMON_START: Figure = Figure {
    label: "daemon start → API answers",
    unit: Unit::Ms,
    libvirt: 159.0,
    target: 50.0,
};

/// Start → guest ready against raw QEMU: libvirt's overhead and hv's targets.
const BOOT_LABEL: &str = "start → guest ready, vs raw QEMU (paired)";
const BOOT_LIBVIRT: &str = "+320 ms, ratio 1.21";
const BOOT_TARGET_DELTA_MS: f64 = 30.0;
const BOOT_TARGET_RATIO: f64 = 1.02;

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    figure: String,
    n: usize,
    median: String,
    range: String,
    libvirt: String,
    target: String,
    met: bool,
    failed: bool,
}

impl Row {
    pub fn measured(fig: &Figure, s: &Summary) -> Row {
        Row {
            figure: fig.label.to_owned(),
            n: s.n,
            median: fig.unit.format(s.median),
            range: format!("{} – {}", fig.unit.format(s.min), fig.unit.format(s.max)),
            libvirt: fig.unit.format_ref(fig.libvirt),
            target: format!("≤ {}", fig.unit.format_ref(fig.target)),
            met: s.median <= fig.target,
            failed: false,
        }
    }

    /// The boot row: the difference and ratio of the medians; the range is of the per-pair
    /// differences.
    pub fn boot(hv: &Summary, raw: &Summary, pair_deltas: &Summary) -> Row {
        let delta = hv.median - raw.median;
        let ratio = hv.median / raw.median;
        Row {
            figure: BOOT_LABEL.to_owned(),
            n: hv.n,
            median: format!("{delta:+.1} ms, ratio {ratio:.3}"),
            range: format!("{:+.1} – {:+.1} ms", pair_deltas.min, pair_deltas.max),
            libvirt: BOOT_LIBVIRT.to_owned(),
            target: format!("≤ +{BOOT_TARGET_DELTA_MS:.0} ms, ratio ≤ {BOOT_TARGET_RATIO}"),
            met: delta <= BOOT_TARGET_DELTA_MS && ratio <= BOOT_TARGET_RATIO,
            failed: false,
        }
    }

    /// A figure that could not be measured; the cell shows the start of the error.
    pub fn error(fig: &Figure, error: &str) -> Row {
        Row {
            figure: fig.label.to_owned(),
            n: 0,
            median: failure_cell(error),
            range: String::new(),
            libvirt: fig.unit.format_ref(fig.libvirt),
            target: format!("≤ {}", fig.unit.format_ref(fig.target)),
            met: false,
            failed: true,
        }
    }

    /// The boot row when the pairs could not be measured.
    pub fn boot_error(error: &str) -> Row {
        Row {
            figure: BOOT_LABEL.to_owned(),
            n: 0,
            median: failure_cell(error),
            range: String::new(),
            libvirt: BOOT_LIBVIRT.to_owned(),
            target: format!("≤ +{BOOT_TARGET_DELTA_MS:.0} ms, ratio ≤ {BOOT_TARGET_RATIO}"),
            met: false,
            failed: true,
        }
    }

    fn cells(&self) -> [String; 7] {
        [
            self.figure.clone(),
            self.n.to_string(),
            self.median.clone(),
            self.range.clone(),
            self.libvirt.clone(),
            self.target.clone(),
            if self.met { "yes" } else { "no" }.to_owned(),
        ]
    }

    pub fn met(&self) -> bool {
        self.met
    }

    pub fn failed(&self) -> bool {
        self.failed
    }
}

/// The first line of an error, short enough for a table cell.
fn failure_cell(error: &str) -> String {
    const MAX_CHARS: usize = 60;
    let first = error.lines().next().unwrap_or_default();
    let mut cell: String = first.chars().take(MAX_CHARS).collect();
    if cell.len() < first.len() {
        cell.push('…');
    }
    format!("failed: {cell}")
}

const HEADER: [&str; 7] = [
    "figure",
    "n",
    "median",
    "min – max",
    "libvirt here",
    "target",
    "met",
];

/// The rows as a Markdown table with aligned columns.
pub fn table(rows: &[Row]) -> String {
    let header = HEADER.map(str::to_owned);
    let body: Vec<[String; 7]> = rows.iter().map(Row::cells).collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for cells in &body {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 7]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = line(&header);
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for cells in &body {
        out.push_str(&line(cells));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(median: f64, min: f64, max: f64) -> Summary {
        Summary {
            n: 5,
            median,
            min,
            max,
        }
    }

    #[test]
    fn a_figure_meets_its_target_when_the_median_does() {
        let ok = Row::measured(&DEFINE, &summary(8.0, 2.0, 30.0));
        assert!(ok.met(), "{ok:?}");
        let slow = Row::measured(&DEFINE, &summary(8.1, 2.0, 8.1));
        assert!(!slow.met(), "{slow:?}");
        assert_eq!(slow.median, "8.1 ms");
        assert_eq!(slow.range, "2.0 ms – 8.1 ms");
    }

    #[test]
    fn boot_row_needs_both_the_delta_and_the_ratio() {
        let row = Row::boot(
            &summary(2020.0, 2000.0, 2100.0),
            &summary(2000.0, 1990.0, 2050.0),
            &summary(20.0, -5.0, 50.0),
        );
        assert!(row.met(), "{row:?}");
        assert_eq!(row.median, "+20.0 ms, ratio 1.010");
        assert_eq!(row.range, "-5.0 – +50.0 ms");
        let slow = Row::boot(
            &summary(1040.0, 1000.0, 1100.0),
            &summary(1000.0, 990.0, 1050.0),
            &summary(40.0, 10.0, 50.0),
        );
        assert!(!slow.met(), "{slow:?}");
    }

    #[test]
    fn table_columns_line_up() {
        let rows = [
            Row::measured(&DEFINE, &summary(3.0, 2.0, 4.0)),
            Row::error(&RSS_1000, "hvd exited\nwith a long log"),
        ];
        let text = table(&rows);
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert_eq!(widths.len(), 4, "{text}");
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        assert!(text.contains("| no "), "{text}");
        assert!(rows[1].failed() && !text.contains("long log"), "{text}");
    }
}
