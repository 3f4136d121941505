//! [`ResponseFuture`]: what the services of this crate return.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::HeaderValue;
use axum::response::Response;
use pin_project_lite::pin_project;

use crate::TOKEN_RENEWED;

pin_project! {
    /// The future [`KeyrollService`](crate::KeyrollService) and
    /// [`RequireScopeService`](crate::RequireScopeService) return: their own
    /// answer (a refusal), the inner service's future (marking the answer
    /// to an old token with [`TOKEN_RENEWED`]), or, when the key store had
    /// to be waited for (a cache miss), the rest of the request, boxed.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, E> {
        Answered { response: Option<Response> },
        Inner { #[pin] future: F, renewed: bool },
        Waiting { future: Pin<Box<dyn Future<Output = Result<Response, E>> + Send>> },
    }
}

impl<F, E> std::fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Answered { .. } => "answered",
            State::Inner { .. } => "inner",
            State::Waiting { .. } => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, E> ResponseFuture<F, E> {
    /// Answers `response` without the inner service.
    pub(crate) fn answered(response: Response) -> Self {
        let response = Some(response);
        ResponseFuture {
            state: State::Answered { response },
        }
    }

    /// The inner service's answer, marked if the request used an old token.
    pub(crate) fn inner(future: F, renewed: bool) -> Self {
        ResponseFuture {
            state: State::Inner { future, renewed },
        }
    }

    /// The answer `future` gives.
    pub(crate) fn waiting(
        future: impl Future<Output = Result<Response, E>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                future: Box::pin(future),
            },
        }
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Answered { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            StateProj::Inner { future, renewed } => {
                let mut response = ready!(future.poll(cx))?;
                if *renewed {
                    mark_renewed(&mut response);
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

/// Tells the client to move to the newer token: [`TOKEN_RENEWED`].
pub(crate) fn mark_renewed(response: &mut Response) {
    response
        .headers_mut()
        .insert(TOKEN_RENEWED, HeaderValue::from_static("true"));
}
