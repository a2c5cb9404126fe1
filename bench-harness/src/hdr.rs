//! Latency histograms and their standard file formats.
//!
//! Latencies are recorded in microseconds. `.hlog` is the HdrHistogram
//! interval log (V2 deflate-compressed histograms, base64, one line per
//! interval) that `HistogramLogProcessor` and the Python `hdrh` package read;
//! `.hgrm` is the percentile distribution text that `outputPercentileDistribution`
//! prints and HdrHistogram's plotter accepts, in milliseconds.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::Error;

/// Highest latency tracked: one hour in microseconds (larger values saturate).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant figures kept by every latency histogram.
pub const SIGNIFICANT_FIGURES: u8 = 3;

/// Microseconds per millisecond (the unit of the text outputs).
const US_PER_MS: f64 = 1000.0;

/// A new empty latency histogram (microseconds).
pub fn latency_histogram() -> Histogram<u64> {
    // Infallible: constant bounds that satisfy 1 <= low, 2 * low <= high, sigfig <= 5.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_FIGURES)
        .expect("constant histogram bounds are valid")
}

/// Interval histograms kept compressed until the log is written, so a long
/// run costs a few hundred bytes per interval rather than a full histogram.
#[derive(Default)]
pub struct IntervalStore {
    intervals: Vec<StoredInterval>,
    serializer: V2DeflateSerializer,
}

impl std::fmt::Debug for IntervalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IntervalStore({} intervals)", self.intervals.len())
    }
}

#[derive(Debug)]
struct StoredInterval {
    start: Duration,
    length: Duration,
    compressed: Vec<u8>,
}

impl IntervalStore {
    /// Stores one interval histogram starting `start` after the run began.
    pub fn push(
        &mut self,
        start: Duration,
        length: Duration,
        hist: &Histogram<u64>,
    ) -> Result<(), Error> {
        let mut compressed = Vec::new();
        self.serializer
            .serialize(hist, &mut compressed)
            .map_err(|e| Error::Io(format!("compressing an interval histogram: {e:?}")))?;
        self.intervals.push(StoredInterval {
            start,
            length,
            compressed,
        });
        Ok(())
    }

    /// Number of stored intervals.
    pub fn len(&self) -> usize {
        self.intervals.len()
    }

    /// True when nothing was stored.
    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// Writes the interval log. `started` is the wall-clock start of the run;
    /// interval timestamps are relative to it (it is the log's BaseTime).
    pub fn write_hlog(&self, path: &Path, started: SystemTime, comment: &str) -> Result<(), Error> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::new(file);
        let mut serializer = V2DeflateSerializer::new();
        let mut deserializer = Deserializer::new();
        {
            let mut writer = IntervalLogWriterBuilder::new()
                .add_comment(comment)
                .add_comment("latency in microseconds; Interval_Max in milliseconds")
                .with_start_time(started)
                .with_base_time(started)
                .with_max_value_divisor(US_PER_MS)
                .begin_log_with(&mut out, &mut serializer)
                .map_err(|e| Error::io(path, e))?;
            for interval in &self.intervals {
                let hist: Histogram<u64> = deserializer
                    .deserialize(&mut interval.compressed.as_slice())
                    .map_err(|e| Error::Io(format!("re-reading a stored histogram: {e:?}")))?;
                writer
                    .write_histogram(&hist, interval.start, interval.length, None)
                    .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            }
        }
        out.flush().map_err(|e| Error::io(path, e))
    }
}

/// Writes `hist` (microseconds) as an HdrHistogram percentile distribution in
/// milliseconds, five ticks per half distance, like the Java and Python tools.
pub fn write_hgrm(hist: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !hist.is_empty() {
        for step in hist.iter_quantiles(5) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / US_PER_MS;
            let q = step.quantile_iterated_to();
            if q < 1.0 {
                writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if hist.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            hist.mean() / US_PER_MS,
            hist.stdev() / US_PER_MS,
            hist.max() as f64 / US_PER_MS,
        )
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        hist.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        hist.distinct_values()
    )
}

/// Writes the `.hgrm` file.
pub fn write_hgrm_file(hist: &Histogram<u64>, path: &Path) -> Result<(), Error> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = BufWriter::new(file);
    write_hgrm(hist, &mut out)
        .and_then(|_| out.flush())
        .map_err(|e| Error::io(path, e))
}

/// A latency in microseconds as milliseconds.
pub fn us_to_ms(us: u64) -> f64 {
    us as f64 / US_PER_MS
}

#[cfg(test)]
mod tests {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    use super::*;

    #[test]
    fn hlog_round_trip_with_the_crate_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.hlog");
        let mut store = IntervalStore::default();
        let mut total = 0;
        for i in 0..5u64 {
            let mut h = latency_histogram();
            for v in 0..(100 * (i + 1)) {
                h.record(1000 + v).unwrap();
                total += 1;
            }
            store
                .push(Duration::from_secs(i), Duration::from_secs(1), &h)
                .unwrap();
        }
        store
            .write_hlog(
                &path,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
                "t",
            )
            .unwrap();
        let text = std::fs::read(&path).unwrap();
        let mut seen = 0;
        let mut deser = Deserializer::new();
        for entry in IntervalLogIterator::new(&text) {
            if let LogEntry::Interval(ih) = entry.unwrap() {
                let bytes = base64_decode(ih.encoded_histogram());
                let h: Histogram<u64> = deser.deserialize(&mut bytes.as_slice()).unwrap();
                seen += h.len();
            }
        }
        assert_eq!(seen, total);
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = A.iter().position(|&a| a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    #[test]
    fn hgrm_format() {
        let mut h = latency_histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("Value"));
        assert!(lines[1].is_empty());
        let last_data = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
        let cols: Vec<&str> = last_data.split_whitespace().collect();
        assert_eq!(
            cols.len(),
            3,
            "last line has no 1/(1-p) column: {last_data}"
        );
        assert_eq!(cols[2], "1000");
        assert!(text.contains("Total count    =         1000]"));
        assert!(text.contains("#[Max     =       10.0"), "{text}");
    }
}
