//! Tables in the seed's shape (psql's, as its Go console printed them):
//!
//! ```text
//!   id | identity | state
//! +----+----------+--------------+
//!    6 | demo01   | DISCONNECTED
//! +----+----------+--------------+
//! (1 rows)
//! ```
//!
//! Headers are centred, numbers right-aligned, text left-aligned; widths count characters.

/// A table to print.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The lines of the table, ending with `(N rows)`.
    pub fn render(&self) -> Vec<String> {
        let chars = |s: &str| s.chars().count();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| chars(&r[c]))
                    .chain([chars(self.headers[c])])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..self.headers.len())
            .map(|c| {
                self.rows.iter().any(|r| !r[c].is_empty())
                    && self
                        .rows
                        .iter()
                        .all(|r| r[c].is_empty() || r[c].parse::<i64>().is_ok())
            })
            .collect();
        let line = |cells: Vec<String>| {
            let text = format!(" {}", cells.join("|"));
            text.trim_end().to_string()
        };
        let header = line(
            self.headers
                .iter()
                .zip(&widths)
                .map(|(h, w)| {
                    let pad = w - chars(h);
                    let left = pad / 2;
                    format!(" {}{h}{} ", " ".repeat(left), " ".repeat(pad - left))
                })
                .collect(),
        );
        let rule = format!(
            "+{}+",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        );
        let mut out = vec![header, rule.clone()];
        for row in &self.rows {
            out.push(line(
                row.iter()
                    .zip(&widths)
                    .zip(&numeric)
                    .map(|((cell, w), num)| {
                        let pad = " ".repeat(w - chars(cell));
                        if *num {
                            format!(" {pad}{cell} ")
                        } else {
                            format!(" {cell}{pad} ")
                        }
                    })
                    .collect(),
            ));
        }
        out.push(rule);
        out.push(format!("({} rows)", self.rows.len()));
        out
    }
}

/// `Mon, 30 Apr 2018 18:45:30 UTC` from an RFC 3339 time (as it is when it does not parse).
pub fn seed_time(rfc3339: &str) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_shape() {
        let mut t = Table::new(&["id", "identity", "description", "state"]);
        t.row(vec![
            "6".into(),
            "demo01".into(),
            String::new(),
            "DISCONNECTED".into(),
        ]);
        let lines = t.render();
        assert_eq!(
            lines,
            [
                "  id | identity | description |    state",
                "+----+----------+-------------+--------------+",
                "   6 | demo01   |             | DISCONNECTED",
                "+----+----------+-------------+--------------+",
                "(1 rows)",
            ]
        );
    }

    #[test]
    fn times_read_like_the_seeds() {
        assert_eq!(
            seed_time("2018-04-30T18:45:30.123Z"),
            "Mon, 30 Apr 2018 18:45:30 UTC"
        );
        assert_eq!(seed_time("never"), "never");
    }
}
