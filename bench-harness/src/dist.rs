//! Seeded distributions for generated load: message sizes and domains.
//!
//! Every distribution is parsed from a human string (see each `FromStr`), is
//! immutable once built, and samples from a caller-owned RNG so a run is
//! reproducible from its `--seed`.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::Error;

/// Largest message the generator will build (a typo guard, not a protocol rule).
pub const SIZE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest number of generated domains (the weights table is one `f64` each).
pub const DOMAINS_MAX: usize = 10_000_000;

/// Parses a byte count: `2000`, `2k`/`2kb` (×1000), `2kib` (×1024), `1m`/`1mb`, `1mib`.
pub fn parse_bytes(text: &str) -> Result<usize, Error> {
    let t = text.trim().to_ascii_lowercase().replace('_', "");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let multiplier: usize = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1_000_000,
        "mib" => 1024 * 1024,
        other => {
            return Err(Error::Parse(format!(
                "size {text:?}: unknown unit {other:?} (use b, k, kb, kib, m, mb, mib)"
            )))
        }
    };
    let value: usize = digits
        .parse()
        .map_err(|_| Error::Parse(format!("size {text:?}: expected a number of bytes")))?;
    value
        .checked_mul(multiplier)
        .filter(|&v| v <= SIZE_BYTES_MAX)
        .ok_or_else(|| Error::Parse(format!("size {text:?}: above {SIZE_BYTES_MAX} bytes")))
}

/// Samples an index from a cumulative weight table (last entry is the total).
fn sample_cdf<R: Rng + ?Sized>(cdf: &[f64], rng: &mut R) -> usize {
    debug_assert!(!cdf.is_empty());
    let total = cdf[cdf.len() - 1];
    let x = rng.gen::<f64>() * total;
    // First entry strictly greater than x; clamp for x == total rounding.
    cdf.partition_point(|&c| c <= x).min(cdf.len() - 1)
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut sum = 0.0;
    weights
        .map(|w| {
            sum += w;
            sum
        })
        .collect()
}

/// Message size distribution (total bytes of the generated message).
#[derive(Debug, Clone, PartialEq)]
pub enum SizeDist {
    /// Every message has this size.
    Fixed(usize),
    /// Uniform over `min..=max`.
    Uniform {
        /// Smallest size.
        min: usize,
        /// Largest size.
        max: usize,
    },
    /// A list of sizes with relative weights.
    Weighted {
        /// The sizes, in the order given.
        sizes: Vec<usize>,
        /// Cumulative weights, same length as `sizes`.
        cdf: Vec<f64>,
    },
}

impl SizeDist {
    /// Draws one size.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match self {
            SizeDist::Fixed(size) => *size,
            SizeDist::Uniform { min, max } => rng.gen_range(*min..=*max),
            SizeDist::Weighted { sizes, cdf } => sizes[sample_cdf(cdf, rng)],
        }
    }

    /// The largest size this distribution can produce.
    pub fn max(&self) -> usize {
        match self {
            SizeDist::Fixed(size) => *size,
            SizeDist::Uniform { max, .. } => *max,
            SizeDist::Weighted { sizes, .. } => sizes.iter().copied().max().unwrap_or(0),
        }
    }

    /// The expected size.
    pub fn mean(&self) -> f64 {
        match self {
            SizeDist::Fixed(size) => *size as f64,
            SizeDist::Uniform { min, max } => (*min as f64 + *max as f64) / 2.0,
            SizeDist::Weighted { sizes, cdf } => {
                let total = cdf.last().copied().unwrap_or(1.0);
                let mut previous = 0.0;
                let mut mean = 0.0;
                for (size, c) in sizes.iter().zip(cdf) {
                    mean += *size as f64 * (c - previous) / total;
                    previous = *c;
                }
                mean
            }
        }
    }
}

impl FromStr for SizeDist {
    type Err = Error;

    /// `2k` (fixed), `1k-20k` (uniform), `1k:70,10k:25,100k:5` (weighted list).
    fn from_str(text: &str) -> Result<Self, Error> {
        if text.contains(':') || text.contains(',') {
            let mut sizes = Vec::new();
            let mut weights = Vec::new();
            for part in text.split(',') {
                let (size, weight) = part.split_once(':').ok_or_else(|| {
                    Error::Parse(format!("size list {text:?}: {part:?} is not SIZE:WEIGHT"))
                })?;
                let weight = parse_weight(weight, text)?;
                sizes.push(parse_bytes(size)?);
                weights.push(weight);
            }
            let cdf = cumulative(weights.into_iter());
            if cdf.last().copied().unwrap_or(0.0) <= 0.0 {
                return Err(Error::Parse(format!(
                    "size list {text:?}: weights sum to 0"
                )));
            }
            return Ok(SizeDist::Weighted { sizes, cdf });
        }
        if let Some((lo, hi)) = text.split_once('-') {
            let (min, max) = (parse_bytes(lo)?, parse_bytes(hi)?);
            if min > max {
                return Err(Error::Parse(format!("size range {text:?}: min above max")));
            }
            return Ok(SizeDist::Uniform { min, max });
        }
        Ok(SizeDist::Fixed(parse_bytes(text)?))
    }
}

fn parse_weight(weight: &str, context: &str) -> Result<f64, Error> {
    let w: f64 = weight
        .trim()
        .parse()
        .map_err(|_| Error::Parse(format!("{context:?}: weight {weight:?} is not a number")))?;
    if !w.is_finite() || w < 0.0 {
        return Err(Error::Parse(format!(
            "{context:?}: weight {weight:?} must be >= 0"
        )));
    }
    Ok(w)
}

/// How generated domains are weighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DomainShape {
    /// Every generated domain is equally likely.
    Uniform,
    /// Domain `i` (1-based) has weight `1 / i^s`.
    Zipf(f64),
}

impl FromStr for DomainShape {
    type Err = Error;

    /// `uniform` or `zipf:S` (for example `zipf:1.1`).
    fn from_str(text: &str) -> Result<Self, Error> {
        let t = text.trim().to_ascii_lowercase();
        if t == "uniform" {
            return Ok(DomainShape::Uniform);
        }
        if let Some(s) = t.strip_prefix("zipf:").or_else(|| t.strip_prefix("zipf=")) {
            let s: f64 = s
                .parse()
                .map_err(|_| Error::Parse(format!("{text:?}: zipf exponent is not a number")))?;
            if !s.is_finite() || s < 0.0 {
                return Err(Error::Parse(format!(
                    "{text:?}: zipf exponent must be >= 0"
                )));
            }
            return Ok(DomainShape::Zipf(s));
        }
        Err(Error::Parse(format!(
            "{text:?}: expected `uniform` or `zipf:S`"
        )))
    }
}

/// A named domain taking a fixed share of all draws (`gmail.com=0.3`).
#[derive(Debug, Clone, PartialEq)]
pub struct HeavyDomain {
    /// The domain name.
    pub name: String,
    /// Its share of all draws, in `0..=1`.
    pub share: f64,
}

impl FromStr for HeavyDomain {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let (name, share) = text
            .split_once('=')
            .ok_or_else(|| Error::Parse(format!("{text:?}: expected DOMAIN=SHARE")))?;
        let share = parse_weight(share, text)?;
        if share > 1.0 || name.is_empty() {
            return Err(Error::Parse(format!("{text:?}: share must be in 0..=1")));
        }
        Ok(HeavyDomain {
            name: name.trim().to_ascii_lowercase(),
            share,
        })
    }
}

/// A weighted set of domains to draw from.
#[derive(Clone, PartialEq)]
pub struct DomainDist {
    names: Vec<String>,
    cdf: Vec<f64>,
}

impl fmt::Debug for DomainDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainDist({} domains)", self.names.len())
    }
}

impl DomainDist {
    /// Builds `count` generated domains `d{i}.{suffix}` shaped by `shape`,
    /// plus `heavy` named domains each taking its fixed share of draws.
    pub fn new(
        count: usize,
        suffix: &str,
        shape: DomainShape,
        heavy: &[HeavyDomain],
    ) -> Result<Self, Error> {
        if count > DOMAINS_MAX {
            return Err(Error::Parse(format!(
                "{count} domains: at most {DOMAINS_MAX}"
            )));
        }
        let heavy_share: f64 = heavy.iter().map(|h| h.share).sum();
        if heavy_share > 1.0 + 1e-9 {
            return Err(Error::Parse(format!(
                "heavy domain shares sum to {heavy_share} > 1"
            )));
        }
        if count == 0 && heavy_share <= 0.0 {
            return Err(Error::Parse(
                "no domains: give --domains N > 0 or heavy domains with a share".into(),
            ));
        }
        let rest = if count == 0 {
            0.0
        } else {
            (1.0 - heavy_share).max(0.0)
        };
        let generated: Vec<f64> = match shape {
            DomainShape::Uniform => vec![1.0; count],
            DomainShape::Zipf(s) => (1..=count).map(|i| 1.0 / (i as f64).powf(s)).collect(),
        };
        let generated_total: f64 = generated.iter().sum();
        let mut names = Vec::with_capacity(count + heavy.len());
        let mut weights = Vec::with_capacity(count + heavy.len());
        for h in heavy {
            names.push(h.name.clone());
            weights.push(h.share);
        }
        for (i, w) in generated.iter().enumerate() {
            names.push(format!("d{}.{}", i + 1, suffix));
            weights.push(if generated_total > 0.0 {
                rest * w / generated_total
            } else {
                0.0
            });
        }
        let cdf = cumulative(weights.into_iter());
        Ok(DomainDist { names, cdf })
    }

    /// Domains of one name (used for sender domains and tests).
    pub fn single(name: &str) -> Self {
        DomainDist {
            names: vec![name.to_owned()],
            cdf: vec![1.0],
        }
    }

    /// Draws one domain.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> &str {
        &self.names[sample_cdf(&self.cdf, rng)]
    }

    /// Number of domains with a positive weight or not.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are no domains (never, for a built distribution).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Each domain with its probability.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        let total = self.total();
        let mut previous = 0.0;
        self.names.iter().zip(&self.cdf).map(move |(name, c)| {
            let p = (c - previous) / total;
            previous = *c;
            (name.as_str(), p)
        })
    }

    fn total(&self) -> f64 {
        self.cdf.last().copied().unwrap_or(0.0)
    }

    /// The sub-distribution of the domains `keep` selects, renormalised, or
    /// `None` when they carry no weight.
    pub fn restrict(&self, mut keep: impl FnMut(&str) -> bool) -> Option<DomainDist> {
        let mut names = Vec::new();
        let mut weights = Vec::new();
        for (name, p) in self.iter() {
            if p > 0.0 && keep(name) {
                names.push(name.to_owned());
                weights.push(p);
            }
        }
        let cdf = cumulative(weights.into_iter());
        if cdf.last().copied().unwrap_or(0.0) <= 0.0 {
            return None;
        }
        Some(DomainDist { names, cdf })
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn bytes_units() {
        assert_eq!(parse_bytes("2000").unwrap(), 2000);
        assert_eq!(parse_bytes("2k").unwrap(), 2000);
        assert_eq!(parse_bytes("2KB").unwrap(), 2000);
        assert_eq!(parse_bytes("2kib").unwrap(), 2048);
        assert_eq!(parse_bytes("1_000").unwrap(), 1000);
        assert!(parse_bytes("2x").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("1000mib").is_err());
    }

    #[test]
    fn size_forms() {
        assert_eq!("2k".parse::<SizeDist>().unwrap(), SizeDist::Fixed(2000));
        assert_eq!(
            "1k-3k".parse::<SizeDist>().unwrap(),
            SizeDist::Uniform {
                min: 1000,
                max: 3000
            }
        );
        let w: SizeDist = "1k:3,10k:1".parse().unwrap();
        assert_eq!(w.max(), 10_000);
        assert!((w.mean() - 3250.0).abs() < 1e-9);
        assert!("3k-1k".parse::<SizeDist>().is_err());
        assert!("1k:0,2k:0".parse::<SizeDist>().is_err());
        assert!("1k:x".parse::<SizeDist>().is_err());
    }

    #[test]
    fn weighted_sizes_follow_weights() {
        let w: SizeDist = "1k:3,10k:1".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 40_000;
        let small = (0..n).filter(|_| w.sample(&mut rng) == 1000).count();
        let share = small as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn zipf_and_heavy_shares() {
        let heavy = vec!["big.example=0.5".parse::<HeavyDomain>().unwrap()];
        let d = DomainDist::new(100, "bench.invalid", DomainShape::Zipf(1.0), &heavy).unwrap();
        let probs: Vec<(String, f64)> = d.iter().map(|(n, p)| (n.to_owned(), p)).collect();
        assert_eq!(probs[0].0, "big.example");
        assert!((probs[0].1 - 0.5).abs() < 1e-12);
        // Zipf s=1: domain 1 is twice as likely as domain 2.
        assert!((probs[1].1 / probs[2].1 - 2.0).abs() < 1e-9);
        let sum: f64 = probs.iter().map(|p| p.1).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        let mut rng = SmallRng::seed_from_u64(1);
        let hits = (0..20_000)
            .filter(|_| d.sample(&mut rng) == "big.example")
            .count();
        assert!((hits as f64 / 20_000.0 - 0.5).abs() < 0.02);
    }

    #[test]
    fn restrict_renormalises() {
        let d = DomainDist::new(4, "x.invalid", DomainShape::Uniform, &[]).unwrap();
        let r = d
            .restrict(|n| n.starts_with("d1.") || n.starts_with("d2."))
            .unwrap();
        assert_eq!(r.len(), 2);
        for (_, p) in r.iter() {
            assert!((p - 0.5).abs() < 1e-12);
        }
        assert!(d.restrict(|_| false).is_none());
    }

    #[test]
    fn bad_domain_specs() {
        assert!(DomainDist::new(0, "x", DomainShape::Uniform, &[]).is_err());
        let too_much = vec![
            HeavyDomain {
                name: "a".into(),
                share: 0.7,
            },
            HeavyDomain {
                name: "b".into(),
                share: 0.7,
            },
        ];
        assert!(DomainDist::new(3, "x", DomainShape::Uniform, &too_much).is_err());
        assert!("zipf:abc".parse::<DomainShape>().is_err());
        assert_eq!(
            "zipf:1.2".parse::<DomainShape>().unwrap(),
            DomainShape::Zipf(1.2)
        );
        assert!("a.example=2".parse::<HeavyDomain>().is_err());
    }
}
