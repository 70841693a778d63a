//! Two request-header readers the API needs that its HTTP stack leaves to applications: a
//! single byte range (RFC 9110 §14.1.2, for players that seek in recordings) and one cookie
//! of a `Cookie` header (RFC 6265 §4.2). Pure functions of the header's text.

use std::ops::Range;

/// The byte range a `Range` header asks of `size` bytes: `Ok(None)` for the whole object,
/// `Err(())` when it cannot be satisfied (416). One range only: `bytes=a-b`, `bytes=a-`,
/// `bytes=-n`; anything else (several ranges, other units, nonsense) is ignored, as RFC 9110
/// allows.
#[allow(clippy::result_unit_err)]
pub fn byte_range(header: Option<&str>, size: u64) -> Result<Option<Range<u64>>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else { return Ok(None) };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => a..b.saturating_add(1).min(size),
        (Ok(_), Ok(_)) => return Ok(None),
        (Ok(a), Err(_)) if last.is_empty() => a..size,
        (Err(_), Ok(n)) if first.is_empty() => size.saturating_sub(n)..size,
        _ => return Ok(None),
    };
    if range.start >= size || range.is_empty() {
        return Err(());
    }
    Ok(Some(range))
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), if it is there.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers_read_as_rfc_9110_says() {
        assert_eq!(byte_range(None, 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Ok(Some(0..10)));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Ok(Some(90..100)));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Ok(Some(90..100)));
        assert_eq!(byte_range(Some("bytes=-500"), 100), Ok(Some(0..100)), "a suffix longer than the object is all of it");
        assert_eq!(byte_range(Some("bytes=50-500"), 100), Ok(Some(50..100)), "the end is clipped");
        assert_eq!(byte_range(Some("bytes=100-"), 100), Err(()), "starts past the end");
        assert_eq!(byte_range(Some("bytes=-0"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=0-"), 0), Err(()));
        assert_eq!(byte_range(Some("bytes=0-18446744073709551615"), 100), Ok(Some(0..100)), "no overflow");
        for ignored in ["bytes=0-1,5-6", "items=0-1", "bytes=9-3", "bytes=x-y", "bytes=", "bytes=-", "bytes=1-2-3"] {
            assert_eq!(byte_range(Some(ignored), 100), Ok(None), "{ignored}");
        }
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        assert_eq!(cookie("a=1; cxb_session=cxs_abc; b=2", "cxb_session"), Some("cxs_abc"));
        assert_eq!(cookie("cxb_session_old=x; cxb_session=y", "cxb_session"), Some("y"), "a longer name is another cookie");
        assert_eq!(cookie("a=1;;b", "b"), None);
        assert_eq!(cookie("", "a"), None);
        assert_eq!(cookie("a==x", "a"), Some("=x"));
    }
}
