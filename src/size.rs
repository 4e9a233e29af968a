//! Sizes as users write them: `5` (absolute) or `+2` / `-1` (relative to what runs now).
//! Shared by `nodes scale`, `scale` and `deploy --scale`; each decides what an out-of-range
//! result means (an error, or a clamp).

/// The size wanted, or `None` when `size` is not a count or a signed change. May be negative.
pub fn resolve(size: &str, current: u32) -> Option<i64> {
    let (sign, digits) = match size.as_bytes().first() {
        Some(b'+') => (1, &size[1..]),
        Some(b'-') => (-1, &size[1..]),
        _ => (0, size),
    };
    let n = i64::from(digits.parse::<u32>().ok()?);
    Some(if sign == 0 {
        n
    } else {
        i64::from(current) + sign * n
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn absolute_and_relative() {
        assert_eq!(super::resolve("5", 2), Some(5));
        assert_eq!(super::resolve("+2", 3), Some(5));
        assert_eq!(super::resolve("-4", 3), Some(-1));
        assert_eq!(super::resolve("+", 3), None);
        assert_eq!(super::resolve("many", 3), None);
    }
}
