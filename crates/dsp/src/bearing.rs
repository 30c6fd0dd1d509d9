//! Bearing defect frequencies from geometry, and the ISO 10816-1 severity zone.

/// Which defect frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defect {
    /// Ball pass frequency, outer race.
    Bpfo,
    /// Ball pass frequency, inner race.
    Bpfi,
    /// Ball (rolling element) spin frequency.
    Bsf,
    /// Fundamental train (cage) frequency.
    Ftf,
}

/// The defect frequency in Hz for a shaft at `rpm`, `n` rolling elements of diameter
/// `d`, pitch diameter `pd` (same unit as `d`) and contact angle `angle_deg`; `None` for
/// a geometry that is not a bearing.
pub fn defect_hz(defect: Defect, rpm: f64, n: f64, d: f64, pd: f64, angle_deg: f64) -> Option<f64> {
    if !(d > 0.0 && pd > d && n >= 1.0) {
        return None;
    }
    let fr = rpm / 60.0;
    let r = d / pd * angle_deg.to_radians().cos();
    Some(match defect {
        Defect::Bpfo => n / 2.0 * fr * (1.0 - r),
        Defect::Bpfi => n / 2.0 * fr * (1.0 + r),
        Defect::Bsf => pd / (2.0 * d) * fr * (1.0 - r * r),
        Defect::Ftf => fr / 2.0 * (1.0 - r),
    })
}

/// ISO 10816-1 zone boundaries A/B, B/C, C/D in mm/s RMS, by machine class I–IV.
const ZONES: [(&str, [f64; 3]); 4] = [
    ("I", [0.71, 1.8, 4.5]),
    ("II", [1.12, 2.8, 7.1]),
    ("III", [1.8, 4.5, 11.2]),
    ("IV", [2.8, 7.1, 18.0]),
];

/// The machine class names, for error messages.
pub const CLASSES: &str = "'I', 'II', 'III', 'IV'";

/// The severity zone 'A'..'D' of a velocity RMS (mm/s) for a machine class ('I'..'IV',
/// case-insensitive); `None` for an unknown class. A value on a boundary is in the
/// higher zone.
pub fn iso_zone(v: f64, class: &str) -> Option<&'static str> {
    let class = class.trim();
    let (_, b) = ZONES.iter().find(|(c, _)| c.eq_ignore_ascii_case(class))?;
    Some(if v < b[0] {
        "A"
    } else if v < b[1] {
        "B"
    } else if v < b[2] {
        "C"
    } else {
        "D"
    })
}
