//! Frames on tokio byte streams: TCP or Unix sockets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::{Limits, WireError, frame_length};

/// Why a stream stopped yielding frames.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("the rest of a frame did not arrive in {0} ms (frame_read_timeout_ms)")]
    SlowFrame(u64),
}

/// Reads one frame (the standard stream framing), refusing it from its
/// segment table when it breaks a limit. `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, TransportError> {
    read_frame_within(reader, limits, None).await
}

/// [`read_frame`], with a deadline for the rest of the frame once its
/// first bytes came (`frame_read_timeout_ms`): a peer that sends half a
/// frame and stalls is an error, not a connection held open for ever.
/// Waiting for a frame to start has no deadline here.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
    rest_timeout_ms: Option<u64>,
) -> Result<Option<Vec<u8>>, TransportError> {
    let mut frame = vec![0u8; 8];
    let Some(first) = read_start(reader, &mut frame[..4]).await? else {
        return Ok(None);
    };
    within(rest_timeout_ms, read_rest(reader, limits, frame, first)).await
}

/// The first bytes of a frame (at least one) into `buf`: how many, or
/// `None` at a clean end of stream. Waiting for them has no deadline.
async fn read_start<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<Option<usize>, TransportError> {
    loop {
        match reader.read(buf).await {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The rest of a frame that started, within `rest_timeout_ms` if given
/// (`frame_read_timeout_ms`).
async fn within<T>(
    rest_timeout_ms: Option<u64>,
    rest: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<Option<T>, TransportError> {
    match rest_timeout_ms {
        None => rest.await.map(Some),
        Some(ms) => match tokio::time::timeout(std::time::Duration::from_millis(ms), rest).await {
            Ok(read) => read.map(Some),
            Err(_) => Err(TransportError::SlowFrame(ms)),
        },
    }
}

/// Reads one netstring (`<len>:<bytes>,`), JSON CapTP's framing on byte
/// streams, refusing it from its length when that is over
/// `frame_bytes_max`; `None` at a clean end of stream. Like
/// [`read_frame_within`], the rest of a netstring that started must come
/// within `rest_timeout_ms`.
pub async fn read_netstring_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
    rest_timeout_ms: Option<u64>,
) -> Result<Option<Vec<u8>>, TransportError> {
    let mut first = [0u8; 1];
    if read_start(reader, &mut first).await?.is_none() {
        return Ok(None);
    }
    within(
        rest_timeout_ms,
        read_netstring_rest(reader, limits, first[0]),
    )
    .await
}

/// A netstring's length digits (from `first` on), its bytes and its comma.
async fn read_netstring_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
    first: u8,
) -> Result<Vec<u8>, TransportError> {
    let malformed =
        |why: &str| TransportError::Wire(WireError::Malformed(format!("netstring: {why}")));
    let mut length: usize = 0;
    let mut byte = first;
    let mut digits = 0;
    while byte != b':' {
        if !byte.is_ascii_digit() || digits == 10 {
            return Err(malformed("expected the length's digits, then ':'"));
        }
        length = length * 10 + usize::from(byte - b'0');
        digits += 1;
        let mut next = [0u8; 1];
        read_exact(reader, &mut next).await?;
        byte = next[0];
    }
    if digits == 0 {
        return Err(malformed("no length"));
    }
    if length > limits.frame_bytes_max {
        return Err(WireError::FrameTooLarge(length, limits.frame_bytes_max).into());
    }
    // Read as it arrives, like a frame's body.
    let mut payload = Vec::new();
    let read = (&mut *reader)
        .take(length as u64)
        .read_to_end(&mut payload)
        .await?;
    let mut comma = [0u8; 1];
    if read < length {
        return Err(TransportError::Truncated);
    }
    read_exact(reader, &mut comma).await?;
    if comma[0] != b',' {
        return Err(malformed("no ',' after the bytes"));
    }
    Ok(payload)
}

/// The rest of a frame whose first `have` bytes are in `frame`.
async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
    mut frame: Vec<u8>,
    have: usize,
) -> Result<Vec<u8>, TransportError> {
    read_exact(reader, &mut frame[have..4]).await?;
    let mut have = 4;
    let total = loop {
        if let Some(total) = frame_length(&frame[..have], limits)? {
            break total;
        }
        // The segment table is 4 bytes per segment after the count.
        let want = have + 4;
        frame.resize(want.max(frame.len()), 0);
        read_exact(reader, &mut frame[have..want]).await?;
        have = want;
    };
    // The body is read as it arrives, the buffer growing with it: a peer
    // that announces a large frame and sends little costs what it sent,
    // not what it announced.
    frame.truncate(have);
    let announced = (total - have) as u64;
    let read = (&mut *reader)
        .take(announced)
        .read_to_end(&mut frame)
        .await?;
    if (read as u64) < announced {
        return Err(TransportError::Truncated);
    }
    Ok(frame)
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), TransportError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TransportError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Writes frames, flushing once at the end.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[Vec<u8>],
) -> Result<(), TransportError> {
    for frame in frames {
        writer.write_all(frame).await?;
    }
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Message, encode};

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused_from_their_header() {
        let frames = vec![
            encode(&Message::Bootstrap { question: 7 }),
            encode(&Message::Release { id: 3, count: 2 }),
        ];
        let mut bytes = Vec::new();
        write_frames(&mut bytes, &frames).await.unwrap();
        let mut reader = bytes.as_slice();
        let limits = Limits::default();
        assert_eq!(
            read_frame(&mut reader, &limits).await.unwrap(),
            Some(frames[0].clone())
        );
        assert_eq!(
            read_frame(&mut reader, &limits).await.unwrap(),
            Some(frames[1].clone())
        );
        assert_eq!(read_frame(&mut reader, &limits).await.unwrap(), None);

        // A header announcing 2^31 words is refused without reading (or allocating) them.
        let mut huge = vec![0u8, 0, 0, 0];
        huge.extend_from_slice(&0x8000_0000u32.to_le_bytes());
        let err = read_frame(&mut huge.as_slice(), &limits).await.unwrap_err();
        assert!(err.to_string().contains("frame_bytes_max"), "{err}");

        // A frame cut short is an error, not a hang or a clean end.
        let cut = &frames[0][..frames[0].len() - 3];
        let err = read_frame(&mut &cut[..], &limits).await.unwrap_err();
        assert!(matches!(err, TransportError::Truncated), "{err}");
    }

    #[tokio::test]
    async fn netstrings_are_read_and_bad_ones_refused() {
        let limits = Limits::default();
        let mut bytes: &[u8] = b"5:hello,0:,";
        for expected in [Some(b"hello".to_vec()), Some(vec![]), None] {
            let read = read_netstring_within(&mut bytes, &limits, None).await;
            assert_eq!(read.unwrap(), expected);
        }
        for bad in [&b"5:hello;"[..], b"x:", b":", b"12345678901:", b"5:hel"] {
            let mut bytes = bad;
            assert!(
                read_netstring_within(&mut bytes, &limits, None)
                    .await
                    .is_err(),
                "{bad:?}"
            );
        }
        let mut huge: &[u8] = b"9999999:";
        let err = read_netstring_within(&mut huge, &limits, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("frame_bytes_max"), "{err}");
    }

    #[tokio::test]
    async fn half_a_frame_then_silence_meets_the_frame_read_timeout() {
        let frame = encode(&Message::Bootstrap { question: 7 });
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut theirs, &frame[..frame.len() / 2])
            .await
            .unwrap();
        let err = read_frame_within(&mut ours, &Limits::default(), Some(200))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::SlowFrame(200)), "{err}");
        assert!(err.to_string().contains("frame_read_timeout_ms"), "{err}");
    }
}
