//! Sending a hedge (see [`crate::hedge`]): the gateway's call to one browser, and to a
//! second one once the first is late.

use std::time::{Duration, Instant};

use tower::retry::budget::Budget as _;
use webaccel_api::wire::{InferRequest, InferResponse};

use crate::backend::conn::CallError;
use crate::backend::{Lease, Pick};
use crate::discovery::Endpoint;
use crate::record::Trace;
use crate::service::Gateway;

/// An answer from a browser: the response, its bridge round trip, and the endpoint of
/// the hedge when a second browser was the one that answered.
pub(crate) type Answered = (InferResponse, Duration, Option<Endpoint>);

impl Gateway {
    /// `request` on `lease`'s browser; when it has not answered within `delay`, on a
    /// second browser too (one that can take it now, not among `tried`, and only with a
    /// token from the retry budget): the first answer wins and the other call is
    /// dropped, which cancels it on its bridge. A failure of one waits for the other.
    pub(crate) async fn hedged(
        &self,
        lease: &Lease,
        request: InferRequest,
        timeout: Duration,
        delay: Duration,
        tried: &[String],
        trace: &mut Trace,
    ) -> Result<Answered, CallError> {
        let model = request.model.clone();
        let sent = Instant::now();
        let first = lease.call(request.clone(), timeout);
        let mut first = std::pin::pin!(first);
        tokio::select! {
            r = &mut first => return r.map(|resp| (resp, sent.elapsed(), None)),
            () = tokio::time::sleep(delay) => {}
        }
        let mut avoid = tried.to_vec();
        avoid.push(lease.backend().endpoint().id);
        let prefer = self.prefers(&model);
        let Pick::Chosen(second) = self.backends.pick(&model, &avoid, &prefer) else {
            self.metrics.hedge(&model, "no_browser");
            return first.await.map(|resp| (resp, sent.elapsed(), None));
        };
        if !self.budget.withdraw() {
            self.metrics.hedge(&model, "budget");
            drop(second);
            return first.await.map(|resp| (resp, sent.elapsed(), None));
        }
        self.metrics.hedge(&model, "sent");
        trace.attempts += 1;
        let hedge_ep = second.backend().endpoint();
        let hedge_sent = Instant::now();
        let hedge = second.call(request, timeout.saturating_sub(delay));
        let mut hedge = std::pin::pin!(hedge);
        let won = |resp: InferResponse| {
            self.metrics.hedge(&model, "won");
            (resp, hedge_sent.elapsed(), Some(hedge_ep.clone()))
        };
        tokio::select! {
            r = &mut first => match r {
                Ok(resp) => Ok((resp, sent.elapsed(), None)),
                Err(e) => hedge.await.map(won).map_err(|_| e),
            },
            r = &mut hedge => match r {
                Ok(resp) => Ok(won(resp)),
                Err(_) => first.await.map(|resp| (resp, sent.elapsed(), None)),
            },
        }
    }
}
