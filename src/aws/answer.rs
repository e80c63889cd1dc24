//! Reading an answer from an AWS endpoint (the service APIs in [`super::aws`], the container
//! credentials endpoint in [`super::credentials`]): the body under a size bound, and errors
//! with their causes.

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// The connection broke mid-body: the error and its causes.
    Broken(String),
    /// The body is larger than the bound: nothing an AWS endpoint we call sends.
    TooLarge(usize),
}

/// Reads `response`'s body, refusing it as soon as it passes `max` bytes, so a misbehaving
/// endpoint costs at most `max` bytes of memory.
pub async fn read_body(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Broken(error_chain(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error and its causes: reqwest's own text ("error sending request") says nothing of why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
