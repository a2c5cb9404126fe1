//! Injection control headers: `X-virtualMTA` (as PowerMTA names it: the
//! source pool, or single source, a message leaves from), and the tenant
//! and campaign headers (`[inject] tenant_header`, `campaign_header`).
//! They are removed at injection, before the message is signed and
//! spooled, and their values are kept in the spool record (queue, tenant
//! and campaign fields); the body is later sent straight from the spool
//! mapping, so nothing has to be removed on the delivery path.
//!
//! Removal moves only the bytes in front of the removed header fields (the
//! `Received:` trace header and the fields before them) towards the body,
//! and the stored message starts that much later in the buffer: the body
//! itself is never copied. Pure: tested by value.

/// Header fields removed per message at most (a client repeating the
/// headers cannot make removal quadratic).
const FIELDS_MAX: usize = 16;
/// Bytes of the header section examined at most.
const HEADER_SCAN_BYTES_MAX: usize = 256 << 10;

/// The lower-cased name of the pool header.
pub const VMTA: &[u8] = b"x-virtualmta";

/// Removes every `X-virtualMTA` field from the header section of
/// `buf[from..]` (up to [`FIELDS_MAX`]). Returns the first field's value
/// (unfolded, trimmed; `None` without the header or when empty) and where
/// the message now starts (`>= from`).
pub fn strip(buf: &mut [u8], from: usize) -> (Option<Vec<u8>>, usize) {
    let mut values = [None];
    let start = strip_fields(buf, from, &[VMTA], &mut values);
    let [value] = values;
    (value, start)
}

/// Removes every field named by one of `names` (lower-cased; empty names
/// match nothing) from the header section of `buf[from..]`, at most
/// [`FIELDS_MAX`] fields in all. `values[i]` receives the first value of
/// `names[i]` (unfolded, trimmed; `None` when absent or empty). Returns
/// where the message now starts (`>= from`).
pub fn strip_fields(
    buf: &mut [u8],
    from: usize,
    names: &[&[u8]],
    values: &mut [Option<Vec<u8>>],
) -> usize {
    debug_assert_eq!(names.len(), values.len());
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let end = buf.len().min(from.saturating_add(HEADER_SCAN_BYTES_MAX));
    let mut at = from;
    // Bounded by `end`: every pass moves `at` past one field.
    while at < end {
        let line_end = next_line(buf, at, end);
        if line_end - at <= 2 && buf[at..line_end].iter().all(|&b| b == b'\r' || b == b'\n') {
            break; // the empty line: end of the header section
        }
        // The field continues over folded lines (RFC 5322 §2.2.3).
        let mut field_end = line_end;
        while field_end < end && matches!(buf[field_end], b' ' | b'\t') {
            field_end = next_line(buf, field_end, end);
        }
        let named = names.iter().position(|n| is_field(&buf[at..field_end], n));
        if let Some(i) = named.filter(|_| ranges.len() < FIELDS_MAX) {
            if values[i].is_none() {
                values[i] = field_value(&buf[at..field_end]);
            }
            ranges.push((at, field_end));
        }
        at = field_end;
    }
    if ranges.is_empty() {
        return from;
    }
    // Shift the kept pieces in front of the last removed field right, from
    // the last piece to the first (memmove; only header bytes move).
    let mut write = ranges[ranges.len() - 1].1;
    let mut piece_end = ranges[ranges.len() - 1].0;
    for i in (0..ranges.len()).rev() {
        let piece_start = if i == 0 { from } else { ranges[i - 1].1 };
        let len = piece_end - piece_start;
        buf.copy_within(piece_start..piece_end, write - len);
        write -= len;
        if i > 0 {
            piece_end = ranges[i - 1].0;
        }
    }
    write
}

/// The index after the line starting at `at` (after its LF, or `end`).
fn next_line(buf: &[u8], at: usize, end: usize) -> usize {
    memchr::memchr(b'\n', &buf[at..end]).map_or(end, |i| at + i + 1)
}

fn is_field(field: &[u8], name: &[u8]) -> bool {
    !name.is_empty()
        && field.len() > name.len()
        && field[..name.len()].eq_ignore_ascii_case(name)
        && field[name.len()..]
            .iter()
            .find(|&&b| b != b' ' && b != b'\t')
            == Some(&b':')
}

fn field_value(field: &[u8]) -> Option<Vec<u8>> {
    let colon = field.iter().position(|&b| b == b':')?;
    let value: Vec<u8> = field[colon + 1..]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let trimmed = value.trim_ascii();
    (!trimmed.is_empty()).then(|| trimmed.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, from: usize) -> (Option<String>, String) {
        let mut buf = text.as_bytes().to_vec();
        let (v, start) = strip(&mut buf, from);
        (
            v.map(|v| String::from_utf8(v).unwrap()),
            String::from_utf8(buf[start..].to_vec()).unwrap(),
        )
    }

    #[test]
    fn removes_the_field_and_keeps_everything_else() {
        let msg = "Received: by x\r\nFrom: a@b\r\nX-VirtualMTA: pool-1 \r\nSubject: s\r\n\r\nbody\r\nX-virtualMTA: not a header\r\n";
        let (v, out) = run(msg, 0);
        assert_eq!(v.as_deref(), Some("pool-1"));
        assert_eq!(
            out,
            "Received: by x\r\nFrom: a@b\r\nSubject: s\r\n\r\nbody\r\nX-virtualMTA: not a header\r\n"
        );
    }

    #[test]
    fn folded_repeated_and_absent() {
        let msg = "xxxxX-virtualMTA:\r\n a\r\nA: 1\r\nx-virtualmta : b\r\nB: 2\r\n\r\nbody";
        let (v, out) = run(msg, 4);
        assert_eq!(v.as_deref(), Some("a"));
        assert_eq!(out, "A: 1\r\nB: 2\r\n\r\nbody");
        let (v, out) = run("A: 1\r\n\r\nX-virtualMTA: late\r\n", 0);
        assert_eq!(v, None);
        assert_eq!(out, "A: 1\r\n\r\nX-virtualMTA: late\r\n");
        let (v, out) = run("X-virtualMTAs: other\r\n\r\n", 0);
        assert_eq!(v, None);
        assert_eq!(out, "X-virtualMTAs: other\r\n\r\n");
        let (v, out) = run("X-virtualMTA:\r\n\r\nb", 0);
        assert_eq!(v, None);
        assert_eq!(out, "\r\nb");
    }

    #[test]
    fn several_names_at_once_keep_each_first_value() {
        let msg = "Received: x\r\nX-Tenant: acme\r\nFrom: a@b\r\nX-Campaign: Black Friday\r\nX-virtualMTA: blue\r\nx-tenant: again\r\n\r\nX-Tenant: body\r\n";
        let mut buf = msg.as_bytes().to_vec();
        let mut values = [None, None, None, None];
        let names: [&[u8]; 4] = [VMTA, b"x-tenant", b"x-campaign", b""];
        let start = strip_fields(&mut buf, 0, &names, &mut values);
        assert_eq!(
            String::from_utf8(buf[start..].to_vec()).unwrap(),
            "Received: x\r\nFrom: a@b\r\n\r\nX-Tenant: body\r\n"
        );
        let text =
            |v: &Option<Vec<u8>>| v.as_deref().map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(text(&values[0]).as_deref(), Some("blue"));
        assert_eq!(text(&values[1]).as_deref(), Some("acme"));
        assert_eq!(text(&values[2]).as_deref(), Some("Black Friday"));
        assert_eq!(values[3], None, "an empty name matches nothing");
    }

    #[test]
    fn the_body_does_not_move() {
        let body = "B".repeat(10_000);
        let msg = format!("X-virtualMTA: p\r\n\r\n{body}");
        let mut buf = msg.into_bytes();
        let body_at = buf.len() - body.len();
        let (_, start) = strip(&mut buf, 0);
        assert_eq!(start, "X-virtualMTA: p\r\n".len());
        assert_eq!(&buf[body_at..], body.as_bytes(), "body bytes stay in place");
    }
}
