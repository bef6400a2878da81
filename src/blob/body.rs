//! The body of a GET read piece by piece, as a reader wants it (see
//! [`super::BlobStore::open_range`]).
//!
//! A sequential reader of a large blob is served best, on links that charge per request, by
//! one long GET rather than many ranges. Reading its body only as pieces are wanted keeps
//! memory bounded: what the reader has not asked for stays in the socket's buffers, and TCP
//! holds the server back. Dropping a body closes its connection.

use std::time::Duration;

use bytes::Bytes;

use super::BlobError;

pub struct Body {
    kind: Kind,
}

enum Kind {
    /// A response still arriving, and the bytes of its last chunk not handed out yet.
    Http {
        resp: reqwest::Response,
        rest: Bytes,
        /// A piece during which no byte came for this long fails.
        stall: Duration,
        on_bytes: Box<dyn Fn(u64) + Send + Sync>,
    },
    /// Bytes fetched whole, by stores that cannot stream.
    Whole(Bytes),
}

impl Body {
    pub fn whole(data: Bytes) -> Body {
        Body {
            kind: Kind::Whole(data),
        }
    }

    /// A response whose body is still to be read; `on_bytes` counts what arrives.
    pub(crate) fn http(
        resp: reqwest::Response,
        stall: Duration,
        on_bytes: Box<dyn Fn(u64) + Send + Sync>,
    ) -> Body {
        Body {
            kind: Kind::Http {
                resp,
                rest: Bytes::new(),
                stall,
                on_bytes,
            },
        }
    }

    /// The next `len` bytes of the body. A body that ends first, stalls, or breaks is an
    /// error: the caller asked for no more than the range it opened.
    pub async fn next(&mut self, len: usize) -> Result<Bytes, BlobError> {
        match &mut self.kind {
            Kind::Whole(data) => {
                if data.len() < len {
                    return Err(short(data.len(), len));
                }
                Ok(data.split_to(len))
            }
            Kind::Http {
                resp,
                rest,
                stall,
                on_bytes,
            } => {
                // Whole chunks that fit are handed out as they came, without a copy.
                if rest.len() >= len {
                    return Ok(rest.split_to(len));
                }
                let mut out = super::client::huge_buffer(len);
                out.extend_from_slice(rest);
                *rest = Bytes::new();
                while out.len() < len {
                    let chunk = tokio::time::timeout(*stall, resp.chunk())
                        .await
                        .map_err(|_| BlobError::Timeout(*stall))?
                        .map_err(|e| BlobError::Transport(e.without_url().to_string()))?
                        .ok_or_else(|| short(out.len(), len))?;
                    on_bytes(chunk.len() as u64);
                    let take = chunk.len().min(len - out.len());
                    out.extend_from_slice(&chunk[..take]);
                    *rest = chunk.slice(take..);
                }
                Ok(out.freeze())
            }
        }
    }
}

fn short(got: usize, len: usize) -> BlobError {
    BlobError::Transport(format!("body ended after {got} of {len} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn whole_bodies_hand_out_pieces_and_fail_when_short() {
        let mut b = Body::whole(Bytes::from_static(b"abcdefg"));
        assert_eq!(&b.next(3).await.unwrap()[..], b"abc");
        assert_eq!(&b.next(2).await.unwrap()[..], b"de");
        assert!(matches!(b.next(3).await, Err(BlobError::Transport(_))));
    }
}
