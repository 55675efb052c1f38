//! Reads of what a remote sends that hold it in memory, each with a bound: a broken or hostile
//! remote (or a login script that prints without end) must not grow the launcher without limit.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};

/// The longest line kept whole; a longer one arrives in pieces of this size.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Appends the next line (with its `\n`) to `line`, or its next `max` bytes when it is longer;
/// `Ok(0)` at the end.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    while total < max {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        let room = (max - total).min(available.len());
        let (take, done) = match available[..room].iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (room, false),
        };
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        total += take;
        if done {
            break;
        }
    }
    Ok(total)
}

/// Everything `reader` sends, up to `max` bytes; what follows is left unread.
pub(crate) async fn read_to_end<R: AsyncRead + Unpin>(
    reader: R,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(max as u64).read_to_end(&mut out).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_come_in_pieces_and_totals_stop_at_the_bound() {
        let text = b"short\nabcdefghij\nend".to_vec();
        let mut reader = tokio::io::BufReader::new(&text[..]);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            if read_line(&mut reader, &mut line, 4).await.unwrap() == 0 {
                break;
            }
            lines.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(lines, ["shor", "t\n", "abcd", "efgh", "ij\n", "end"]);
        let endless = tokio::io::repeat(b'x');
        assert_eq!(read_to_end(endless, 1000).await.unwrap().len(), 1000);
    }
}
