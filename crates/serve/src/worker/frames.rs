//! Frames on a worker's standard output: a tag byte, a little-endian `u32` length, the payload.
//!
//! A request's answer is any number of [`DATA`] frames (the rendered result, in order), then one
//! [`END`] (`{"rows": N, "ms": M}`, M the worker's own time), or one [`ERROR`] (a
//! [`super::Failure`] as JSON) instead.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const DATA: u8 = b'D';
pub const END: u8 = b'Z';
pub const ERROR: u8 = b'E';

/// The largest payload a frame may carry; data is cut into frames of at most this.
pub const MAX: usize = 1 << 20;

pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    tag: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    debug_assert!(payload.len() <= MAX);
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await
}

/// Writes `data` as [`DATA`] frames of at most [`MAX`] bytes.
pub async fn write_data<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    for chunk in data.chunks(MAX) {
        write(w, DATA, chunk).await?;
    }
    Ok(())
}

/// The next frame, or `None` at a clean end of input.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX || ![DATA, END, ERROR].contains(&head[0]) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "a worker sent a bad frame (tag {:#x}, {len} bytes)",
                head[0]
            ),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_back_as_written_and_a_bad_tag_is_an_error() {
        let mut buf = Vec::new();
        write_data(&mut buf, &vec![7u8; MAX + 3]).await.unwrap();
        write(&mut buf, END, b"{\"rows\":1}").await.unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read(&mut r).await.unwrap().unwrap().1.len(), MAX);
        assert_eq!(read(&mut r).await.unwrap().unwrap().1, vec![7u8; 3]);
        assert_eq!(read(&mut r).await.unwrap().unwrap().0, END);
        assert!(read(&mut r).await.unwrap().is_none());
        let bad = [b'X', 0, 0, 0, 0];
        assert!(read(&mut bad.as_slice()).await.is_err());
    }
}
