//! Reading a service's `GET /metrics` the way Prometheus does.
//!
//! The text format is parsed here rather than with `prometheus-parse`,
//! which splits label values at `{`, `}` and `,` and so misreads axum's
//! route templates (`route="/api/orders/{id}"`).

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Metrics {
    samples: Vec<Sample>,
    helped: BTreeSet<String>,
    pub text: String,
}

/// Scrapes `{base}/metrics`, requiring 200 and the Prometheus text format.
pub async fn scrape(base: &str) -> Metrics {
    let response = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"));
    assert_eq!(response.status(), 200, "GET {base}/metrics");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content type {content_type:?}"
    );
    let text = response.text().await.expect("a body");
    Metrics::parse(text)
}

impl Metrics {
    /// Parses the exposition, panicking on a line that is not valid.
    pub fn parse(text: String) -> Metrics {
        let mut samples = Vec::new();
        let mut helped = BTreeSet::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(help) = line.strip_prefix("# HELP ") {
                helped.extend(help.split_whitespace().next().map(str::to_string));
            } else if !line.starts_with('#') {
                let sample = parse_sample(line)
                    .unwrap_or_else(|| panic!("not a valid sample line: {line:?}"));
                samples.push(sample);
            }
        }
        Metrics {
            samples,
            helped,
            text,
        }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum over every series of `name` carrying `labels`; for a
    /// histogram `name`, its observation count (`name_count`). 0 when none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let count = format!("{name}_count");
        let series = if self.matching(name, labels).next().is_some() {
            name
        } else {
            count.as_str()
        };
        self.matching(series, labels).map(|s| s.value).sum()
    }

    /// Every series of `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> {
        self.matching(name, &[])
    }

    /// Whether any series of `name` (or of histogram `name`) carrying
    /// `labels` exists.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let count = format!("{name}_count");
        self.matching(name, labels).next().is_some()
            || self.matching(&count, labels).next().is_some()
    }

    /// Every metric name with a help text or a series (histogram series
    /// under their base name).
    pub fn names(&self) -> BTreeSet<String> {
        let base = |name: &str| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_string()
        };
        self.samples
            .iter()
            .map(|s| base(&s.name))
            .chain(self.helped.iter().cloned())
            .collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => break,
                ',' | ' ' => {}
                '=' => {
                    let (_, quote) = chars.next()?;
                    if quote != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => {
                                let (_, escaped) = chars.next()?;
                                value.push(if escaped == 'n' { '\n' } else { escaped });
                            }
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        let consumed = chars.next().map_or(inner.len(), |(i, _)| i);
        rest = &inner[consumed..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_with_braces_commas_and_escapes() {
        let metrics = Metrics::parse(
            "# HELP x_total Things\n# TYPE x_total counter\nx_total{route=\"/a/{id}\",why=\"a,b \\\"q\\\"\"} 3\nx_total{route=\"/b\"} 4\ny 1.5\n"
                .to_string(),
        );
        assert_eq!(metrics.value("x_total", &[("route", "/a/{id}")]), 3.0);
        assert_eq!(metrics.value("x_total", &[("why", "a,b \"q\"")]), 3.0);
        assert_eq!(metrics.value("x_total", &[]), 7.0);
        assert_eq!(metrics.value("y", &[]), 1.5);
        assert!(metrics.names().contains("x_total"));
    }
}
