//! Detection ahead of failure, as plain arithmetic over a series of
//! samples: a robust linear fit that forecasts when a level crosses a
//! threshold, and a robust baseline (median and median absolute deviation,
//! by time of day or week) that says whether a value is unusual.
//!
//! Both are pure: the samples come from tend's own store (host signals) or
//! from a Prometheus range query, and the caller turns the verdict into a
//! reading. Too little history is never a verdict: it is unknown.

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};

pub use crate::model::health::{Direction, Seasonality};

/// One sample: when, and the value.
pub type Sample = (DateTime<Utc>, f64);

/// At most this many samples go into one fit (the fit is quadratic in
/// them); a longer series is thinned evenly.
const MAX_FIT: usize = 240;

/// A robust straight line through a series: Theil–Sen (the median of the
/// pairwise slopes, then the median intercept), which a few spikes or
/// gaps do not bend, with how well it explains the series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Units per second.
    pub slope: f64,
    /// The level the line gives for the latest sample's time.
    pub level: f64,
    /// The share of the series' variance the line explains (r², 0–1).
    pub r2: f64,
    /// How much time the samples cover.
    pub span: Duration,
    pub samples: usize,
}

pub fn fit(series: &[Sample]) -> Option<Fit> {
    let thinned = thin(series, MAX_FIT);
    let (first, last) = (thinned.first()?.0, thinned.last()?.0);
    let xs: Vec<f64> = thinned
        .iter()
        .map(|(t, _)| (*t - first).num_milliseconds() as f64 / 1000.0)
        .collect();
    let ys: Vec<f64> = thinned.iter().map(|(_, v)| *v).collect();
    let mut slopes = Vec::with_capacity(xs.len() * xs.len() / 2);
    for i in 0..xs.len() {
        for j in i + 1..xs.len() {
            let dx = xs[j] - xs[i];
            if dx > f64::EPSILON {
                slopes.push((ys[j] - ys[i]) / dx);
            }
        }
    }
    let slope = median(&mut slopes)?;
    let mut intercepts: Vec<f64> = xs.iter().zip(&ys).map(|(x, y)| y - slope * x).collect();
    let intercept = median(&mut intercepts)?;
    let mean = ys.iter().sum::<f64>() / ys.len() as f64;
    let total: f64 = ys.iter().map(|y| (y - mean).powi(2)).sum();
    let residual: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (y - (intercept + slope * x)).powi(2))
        .sum();
    let r2 = if total <= f64::EPSILON {
        // A flat series: the line explains it exactly.
        1.0
    } else {
        (1.0 - residual / total).max(0.0)
    };
    Some(Fit {
        slope,
        level: intercept + slope * xs.last().copied().unwrap_or(0.0),
        r2,
        span: (last - first).to_std().unwrap_or_default(),
        samples: thinned.len(),
    })
}

/// What a forecast needs to be trusted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    /// The history must cover at least this much.
    pub min_span: Duration,
    /// The fit must explain at least this share of the variance: a
    /// write/clean-up sawtooth does not.
    pub min_fit: f64,
    /// The level must be past this before a crossing is forecast (toward
    /// the threshold): a nearly empty disk filling fast is not urgent.
    pub floor: Option<f64>,
    /// Whether the signal crosses by rising to the threshold (a disk
    /// filling) or falling to it; `None`: the side the series started on.
    pub rising: Option<bool>,
}

/// A forecast: when the level crosses the threshold.
#[derive(Debug, Clone, PartialEq)]
pub enum Forecast {
    /// Too little history (or too few samples) to say.
    Learning(String),
    /// The level is not heading for the threshold, not steadily, or not
    /// yet past the floor: no crossing is forecast.
    Never(String),
    /// The line crosses the threshold after this long (zero: already past).
    In(Duration, Fit),
}

pub fn forecast(series: &[Sample], threshold: f64, guard: &Guard) -> Forecast {
    let covered = match (series.first(), series.last()) {
        (Some(a), Some(b)) => (b.0 - a.0).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let learning = || {
        Forecast::Learning(format!(
            "learning: {} of history ({} samples); the forecast needs {}",
            words(covered),
            series.len(),
            words(guard.min_span)
        ))
    };
    let Some(f) = fit(series).filter(|f| f.samples >= 5) else {
        return learning();
    };
    if f.span < guard.min_span {
        return learning();
    }
    let latest = series.last().map_or(f.level, |s| s.1);
    let rising = guard
        .rising
        .unwrap_or_else(|| series.first().is_none_or(|s| s.1 <= threshold));
    if (rising && latest >= threshold) || (!rising && latest <= threshold) {
        return Forecast::In(Duration::ZERO, f);
    }
    let toward = if rising { f.slope > 0.0 } else { f.slope < 0.0 };
    if !toward || f.slope.abs() <= f64::EPSILON {
        return Forecast::Never(format!(
            "not heading for {} (level {}, {} per hour)",
            num(threshold),
            num(f.level),
            num(f.slope * 3600.0)
        ));
    }
    if f.r2 < guard.min_fit {
        return Forecast::Never(format!(
            "no steady trend (the fit explains {:.0}% of the variation; needs {:.0}%)",
            f.r2 * 100.0,
            guard.min_fit * 100.0
        ));
    }
    if let Some(floor) = guard.floor {
        let past = if rising {
            latest >= floor
        } else {
            latest <= floor
        };
        if !past {
            return Forecast::Never(format!(
                "level {} is not past the floor {} yet",
                num(latest),
                num(floor)
            ));
        }
    }
    let secs = ((threshold - f.level) / f.slope).max(0.0);
    Forecast::In(Duration::from_secs_f64(secs.min(1e9)), f)
}

/// A forecast as a reading: the time left in seconds, unhealthy when it is
/// less than `below`; unknown while learning.
pub fn reading_of(
    f: &Forecast,
    what: &str,
    rate: &dyn Fn(f64) -> String,
    below: Duration,
) -> (super::Status, Option<f64>, String) {
    use super::Status;
    match f {
        Forecast::Learning(why) => (Status::Unknown, None, why.clone()),
        Forecast::Never(why) => (Status::Healthy, None, format!("{what}: {why}")),
        Forecast::In(left, fit) => {
            let detail = format!(
                "{what} in {} ({} per hour, fit {:.0}% over {})",
                words(*left),
                rate(fit.slope * 3600.0),
                fit.r2 * 100.0,
                words(fit.span)
            );
            if *left < below {
                (
                    Status::Unhealthy,
                    Some(left.as_secs_f64()),
                    format!("{detail}: sooner than {}", words(below)),
                )
            } else {
                (Status::Healthy, Some(left.as_secs_f64()), detail)
            }
        }
    }
}

/// A value against its band, as a reading.
pub fn band_reading(
    signal: &str,
    value: f64,
    band: &Band,
    side: Direction,
    over: &str,
) -> (super::Status, Option<f64>, String) {
    use super::Status;
    let dev = band.deviations(value);
    let usual = format!(
        "its usual {}–{} at this time (median {} of {} values over {over})",
        num(band.low),
        num(band.high),
        num(band.median),
        band.samples
    );
    if band.unusual(value, side) {
        let way = if dev >= 0.0 { "above" } else { "below" };
        (
            Status::Unhealthy,
            Some(value),
            format!(
                "{signal} {} is {:.1} deviations {way} {usual}",
                num(value),
                dev.abs()
            ),
        )
    } else {
        (
            Status::Healthy,
            Some(value),
            format!("{signal} {} is within {usual}", num(value)),
        )
    }
}

/// The usual value at a time: the median and the robust spread of the
/// history's values at that time of day or week.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    pub median: f64,
    /// 1.4826 × MAD (a standard deviation for normal data), never less
    /// than 5% of the median's size so that a flat history does not make
    /// every wiggle unusual.
    pub spread: f64,
    pub low: f64,
    pub high: f64,
    /// How many past values the band is made of.
    pub samples: usize,
}

impl Band {
    /// How many spreads `value` is from the median (signed).
    pub fn deviations(&self, value: f64) -> f64 {
        (value - self.median) / self.spread
    }

    pub fn unusual(&self, value: f64, side: Direction) -> bool {
        match side {
            Direction::Up => value > self.high,
            Direction::Down => value < self.low,
            Direction::Both => value > self.high || value < self.low,
        }
    }
}

/// The half-width of the time-of-day window a seasonal band is made of.
const SEASON_WINDOW: i64 = 30 * 60;
/// A band needs at least this many past values at its time.
pub const MIN_BAND_SAMPLES: usize = 5;

/// The band for `at` from the history: unknown (`Err`, saying why) while
/// the history covers less than `min_history` or too few values fall at
/// that time.
pub fn band(
    history: &[Sample],
    at: DateTime<Utc>,
    season: Seasonality,
    sensitivity: f64,
    min_history: Duration,
) -> Result<Band, String> {
    let covered = match (history.first(), history.last()) {
        (Some(a), Some(b)) => (b.0 - a.0).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    if covered < min_history {
        return Err(format!(
            "learning the baseline ({} of history; needs {})",
            words(covered),
            words(min_history)
        ));
    }
    // Earlier days (weeks) only: the half hour being judged is not its
    // own baseline, or a lasting regression would become usual.
    let earlier = match season {
        Seasonality::None => at,
        Seasonality::Daily => at - chrono::Duration::seconds(86_400 - SEASON_WINDOW),
        Seasonality::Weekly => at - chrono::Duration::seconds(7 * 86_400 - SEASON_WINDOW),
    };
    let mut values: Vec<f64> = history
        .iter()
        .filter(|(t, _)| *t <= earlier && same_time(*t, at, season))
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .collect();
    if values.len() < MIN_BAND_SAMPLES {
        return Err(format!(
            "learning the baseline ({} values at this time; needs {MIN_BAND_SAMPLES})",
            values.len()
        ));
    }
    let samples = values.len();
    let median = median(&mut values).unwrap_or_default();
    let mut dev: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
    let mad = self::median(&mut dev).unwrap_or_default();
    // A spread of at least 5% of the usual level (of the median here, or
    // of the whole history's mean size when that is larger): a signal
    // that is nearly always the same is not unusual at every wiggle.
    let size = history.iter().map(|(_, v)| v.abs()).sum::<f64>() / history.len().max(1) as f64;
    let spread = (1.4826 * mad).max(0.05 * median.abs().max(size)).max(1e-9);
    Ok(Band {
        median,
        spread,
        low: median - sensitivity * spread,
        high: median + sensitivity * spread,
        samples,
    })
}

/// Whether `t` falls at the same time of day (or week) as `at`, within
/// half an hour either side.
fn same_time(t: DateTime<Utc>, at: DateTime<Utc>, season: Seasonality) -> bool {
    let period: i64 = match season {
        Seasonality::None => return true,
        Seasonality::Daily => 86_400,
        Seasonality::Weekly => 7 * 86_400,
    };
    let pos = |d: DateTime<Utc>| -> i64 {
        let day = i64::from(d.num_seconds_from_midnight());
        match season {
            Seasonality::Weekly => i64::from(d.weekday().num_days_from_monday()) * 86_400 + day,
            _ => day,
        }
    };
    let diff = (pos(t) - pos(at)).rem_euclid(period);
    diff.min(period - diff) <= SEASON_WINDOW
}

/// The median, reordering `v`; `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// At most `max` samples, evenly spread, always keeping the latest.
pub fn thin(series: &[Sample], max: usize) -> Vec<Sample> {
    if series.len() <= max || max < 2 {
        return series.to_vec();
    }
    let step = (series.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| series[((i as f64 * step).round() as usize).min(series.len() - 1)])
        .collect()
}

/// A duration in words: `3h12m`, `4m`, `45s`.
pub fn words(d: Duration) -> String {
    let s = d.as_secs();
    // The larger unit, then the smaller one when it is not zero.
    let two = |big: u64, unit: &str, small: u64, sub: &str| match small {
        0 => format!("{big}{unit}"),
        _ => format!("{big}{unit}{small:02}{sub}"),
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => two(s / 60, "m", s % 60, "s"),
        _ if s < 172_800 => two(s / 3600, "h", (s % 3600) / 60, "m"),
        _ => two(s / 86_400, "d", (s % 86_400) / 3600, "h"),
    }
}

pub fn num(v: f64) -> String {
    let s = match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    };
    if !s.contains('.') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn series(n: i64, every: i64, f: impl Fn(i64) -> f64) -> Vec<Sample> {
        (0..n).map(|i| (at(i * every), f(i * every))).collect()
    }

    fn guard() -> Guard {
        Guard {
            min_span: Duration::from_secs(60),
            min_fit: 0.8,
            floor: Some(0.5),
            rising: None,
        }
    }

    #[test]
    fn a_steady_fill_is_forecast_to_cross_when_the_line_does() {
        // 0.5 → 0.8 over 5 minutes: 0.001 per second, so 1.0 in 200 s.
        let s = series(31, 10, |t| 0.5 + 0.001 * t as f64);
        let Forecast::In(left, f) = forecast(&s, 1.0, &guard()) else {
            panic!("no forecast: {:?}", forecast(&s, 1.0, &guard()));
        };
        assert!((left.as_secs_f64() - 200.0).abs() < 1.0, "{left:?}");
        assert!(f.r2 > 0.99);
    }

    #[test]
    fn spikes_and_gaps_do_not_bend_the_fit() {
        let mut s = series(60, 10, |t| 0.6 + 0.0005 * t as f64);
        s[10].1 = 0.0;
        s[30].1 = 5.0;
        s.drain(40..50);
        let f = fit(&s).unwrap();
        assert!((f.slope - 0.0005).abs() < 1e-6, "{f:?}");
    }

    #[test]
    fn a_sawtooth_that_never_fills_forecasts_no_crossing() {
        // Writes for 60 s, then a clean-up back to 0.55, over 5 cycles.
        let s = series(90, 5, |t| 0.55 + 0.004 * (t % 90) as f64);
        // Just before a clean-up the level is high and the last ramp is
        // steep: the whole window still says no steady trend.
        let cut: Vec<Sample> = s.iter().copied().filter(|(t, _)| *t <= at(440)).collect();
        for window in [&s[..], &cut[..]] {
            match forecast(window, 1.0, &guard()) {
                Forecast::Never(why) => assert!(
                    why.contains("no steady trend") || why.contains("not heading"),
                    "{why}"
                ),
                other => panic!("sawtooth forecast: {other:?}"),
            }
        }
    }

    #[test]
    fn too_little_history_is_learning_and_below_the_floor_is_never() {
        let s = series(4, 10, |t| 0.5 + 0.01 * t as f64);
        assert!(matches!(forecast(&s, 1.0, &guard()), Forecast::Learning(_)));
        let s = series(10, 2, |t| 0.6 + 0.01 * t as f64);
        assert!(matches!(forecast(&s, 1.0, &guard()), Forecast::Learning(_)));
        let s = series(31, 10, |t| 0.1 + 0.001 * t as f64);
        assert!(matches!(forecast(&s, 1.0, &guard()), Forecast::Never(w) if w.contains("floor")));
    }

    #[test]
    fn a_falling_level_is_forecast_toward_a_lower_threshold() {
        // Free MiB falling 1 per second from 400; 0 in about 340 s more.
        let g = Guard {
            floor: Some(500.0),
            ..guard()
        };
        let s = series(61, 1, |t| 400.0 - t as f64);
        let Forecast::In(left, _) = forecast(&s, 0.0, &g) else {
            panic!()
        };
        assert!((left.as_secs_f64() - 340.0).abs() < 1.0, "{left:?}");
    }

    /// A week every 5 minutes with a daily cycle peaking at 12:00 UTC.
    fn week() -> Vec<Sample> {
        let start = DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        (0..7 * 288)
            .map(|i| {
                let t = start + chrono::Duration::minutes(5 * i);
                let hour = f64::from(t.num_seconds_from_midnight()) / 3600.0;
                let wobble = ((i * 7919) % 13) as f64 / 13.0 * 0.02 - 0.01;
                let v = 0.2 + 0.15 * ((hour - 12.0) / 24.0 * std::f64::consts::TAU).cos();
                (t, v + wobble)
            })
            .collect()
    }

    #[test]
    fn a_daily_band_follows_the_time_of_day() {
        let h = week();
        let peak = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let trough = peak + chrono::Duration::hours(12);
        let day = Duration::from_secs(3600);
        let at_peak = band(&h, peak, Seasonality::Daily, 4.0, day).unwrap();
        let at_trough = band(&h, trough, Seasonality::Daily, 4.0, day).unwrap();
        // The peak's usual value is an outlier at the trough, not at the peak.
        assert!(!at_peak.unusual(0.35, Direction::Up), "{at_peak:?}");
        assert!(at_trough.unusual(0.35, Direction::Up), "{at_trough:?}");
        assert!(!at_trough.unusual(0.05, Direction::Both), "{at_trough:?}");
        // Without seasonality the whole range is usual.
        let flat = band(&h, trough, Seasonality::None, 4.0, day).unwrap();
        assert!(!flat.unusual(0.35, Direction::Up), "{flat:?}");
    }

    #[test]
    fn spikes_in_the_history_do_not_widen_the_band() {
        let mut h = week();
        for i in (0..h.len()).step_by(50) {
            h[i].1 = 10.0;
        }
        let trough = DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let b = band(
            &h,
            trough,
            Seasonality::Daily,
            4.0,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(b.high < 0.15, "{b:?}");
    }

    #[test]
    fn a_short_history_is_still_learning() {
        let h: Vec<Sample> = week().into_iter().take(6).collect();
        let err = band(
            &h,
            h[5].0,
            Seasonality::Daily,
            4.0,
            Duration::from_secs(3600),
        )
        .unwrap_err();
        assert!(err.contains("learning the baseline"), "{err}");
        // The same time of the next week: the values of the week before.
        let weekly = band(
            &week(),
            week()[100].0 + chrono::Duration::days(7),
            Seasonality::Weekly,
            4.0,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(weekly.samples >= MIN_BAND_SAMPLES);
    }

    #[test]
    fn the_half_hour_being_judged_is_not_its_own_baseline() {
        let h = week();
        let at = DateTime::parse_from_rfc3339("2026-11-30T00:25:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let before = band(&h, at, Seasonality::Daily, 4.0, Duration::from_secs(3600)).unwrap();
        // Half an hour of a regression, at the trough, just before `at`.
        let mut regressed = h.clone();
        for m in (0..=25).step_by(5) {
            regressed.push((at - chrono::Duration::minutes(25 - m), 0.35));
        }
        let after = band(
            &regressed,
            at,
            Seasonality::Daily,
            4.0,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(before.samples, after.samples);
        assert!(after.unusual(0.35, Direction::Up), "{after:?}");
    }

    #[test]
    fn a_steady_level_is_not_unusual_at_every_wiggle() {
        let h = series(200, 60, |_| 100.0);
        let b = band(
            &h,
            h[199].0,
            Seasonality::None,
            3.0,
            Duration::from_secs(600),
        )
        .unwrap();
        assert!(!b.unusual(101.0, Direction::Both), "{b:?}");
        assert!(b.unusual(130.0, Direction::Up), "{b:?}");
    }

    #[test]
    fn a_level_already_past_a_rising_threshold_has_no_time_left() {
        // A queue above its limit and still growing.
        let s = series(61, 1, |t| 120.0 + t as f64);
        let g = Guard {
            rising: Some(true),
            floor: None,
            ..guard()
        };
        assert!(matches!(forecast(&s, 100.0, &g), Forecast::In(d, _) if d.is_zero()));
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(words(Duration::from_secs(45)), "45s");
        assert_eq!(words(Duration::from_secs(240)), "4m");
        assert_eq!(words(Duration::from_secs(250)), "4m10s");
        assert_eq!(words(Duration::from_secs(4 * 3600 + 60)), "4h01m");
        assert_eq!(words(Duration::from_secs(60)), "1m");
        assert_eq!(words(Duration::from_secs(3600)), "1h");
        assert_eq!(words(Duration::from_secs(5400)), "1h30m");
        assert_eq!(words(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(words(Duration::from_secs(7 * 86_400)), "7d");
    }
}
