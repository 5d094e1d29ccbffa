//! Human output: aligned tables, ages ("12s ago") and durations ("412ms", "3.2s").

use chrono::{DateTime, Utc};

/// A plain text table: columns padded to their widest cell, two spaces apart, no trailing blanks.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < cols {
                    line.push_str(&" ".repeat(width - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// How long ago `then` was, coarsely: `3s ago`, `5m ago`, `2h ago`, `4d ago` (`just now` for clock skew).
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    match secs {
        s if s < 0 => "just now".to_owned(),
        s if s < 120 => format!("{s}s ago"),
        s if s < 2 * 3600 => format!("{}m ago", s / 60),
        s if s < 2 * 86400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

/// `412ms` below ten seconds' worth of milliseconds, `12.3s` up to a few minutes, `4m05s` beyond.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        m if m < 10_000 => format!("{m}ms"),
        m if m < 180_000 => format!("{:.1}s", m as f64 / 1000.0),
        m => format!("{}m{:02}s", m / 60_000, (m / 1000) % 60),
    }
}

/// A hand-drawn progress bar for a terminal: `[#######.............]  7/20  ok 6  failed 1`.
pub fn progress_bar(done: usize, total: usize, ok: usize, failed: usize, verb: &str) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH).min(WIDTH);
    format!("{verb} [{}{}] {done}/{total}  ok {ok}  failed {failed}", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["i-1".into(), "ALIVE".into()]);
        t.row(vec!["agent-long".into(), "".into()]);
        assert_eq!(t.render(), "ID          STATUS\ni-1         ALIVE\nagent-long\n");
    }

    #[test]
    fn ages_and_durations_read_naturally() {
        let now = Utc::now();
        assert_eq!(age(now - chrono::Duration::seconds(12), now), "12s ago");
        assert_eq!(age(now - chrono::Duration::seconds(600), now), "10m ago");
        assert_eq!(age(now - chrono::Duration::hours(30), now), "30h ago");
        assert_eq!(age(now + chrono::Duration::seconds(3), now), "just now");
        assert_eq!(duration_ms(412), "412ms");
        assert_eq!(duration_ms(12_340), "12.3s");
        assert_eq!(duration_ms(245_000), "4m05s");
    }

    #[test]
    fn the_bar_fills_with_progress() {
        assert_eq!(progress_bar(0, 2, 0, 0, "restart"), format!("restart [{}] 0/2  ok 0  failed 0", ".".repeat(30)));
        assert_eq!(
            progress_bar(1, 2, 1, 0, "restart"),
            format!("restart [{}{}] 1/2  ok 1  failed 0", "#".repeat(15), ".".repeat(15))
        );
    }
}
