//! Request/response over MQTT 5.0 (section 4.10): the requester publishes with
//! a Response Topic and Correlation Data; the responder publishes its answer to
//! that topic with the same Correlation Data.

use std::time::Duration;

use tern_proto::session::PublishOutcome;
use tern_proto::{ByteString, Bytes, ProtocolVersion, QoS};

use crate::backoff::random;
use crate::{Client, ClientError, Message, PublishOptions};

impl Client {
    /// Send a request and wait up to `timeout` for its response.
    ///
    /// The first call subscribes this client to a private response topic
    /// (`tern/inbox/<random>`); each request carries fresh Correlation Data,
    /// and the response with that data on that topic is returned here instead
    /// of appearing in the event stream. Needs MQTT 5.0.
    pub async fn request(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        self.request_with(
            topic,
            payload,
            PublishOptions::new().qos(QoS::AtLeastOnce),
            timeout,
        )
        .await
    }

    /// [`Client::request`] with publish options (QoS, user properties, content type...).
    pub async fn request_with(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        if self.version() != ProtocolVersion::V5 {
            return Err(ClientError::InvalidOption {
                option: "version",
                reason: "request/response needs MQTT 5.0 (Response Topic and Correlation Data)".into(),
            });
        }
        let inbox = self
            .inbox()
            .get_or_try_init(|| async {
                let topic = ByteString::from(format!("tern/inbox/{:016x}{:016x}", random(), random()));
                self.subscribe(topic.clone(), QoS::AtLeastOnce).await?;
                Ok::<_, ClientError>(topic)
            })
            .await?
            .clone();
        let correlation = self.next_correlation();
        let rx = self.expect_response(inbox.clone(), correlation.clone()).await?;
        self.publish_with(
            topic,
            payload,
            options.response_topic(inbox).correlation_data(correlation),
        )
        .await?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ClientError::Timeout("no response to the request")),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(m)) => Ok(m),
        }
    }

    /// Answer a request: publish `payload` to its Response Topic with its
    /// Correlation Data, at the request's QoS.
    pub async fn respond(
        &self,
        request: &Message,
        payload: impl Into<Bytes>,
    ) -> Result<PublishOutcome, ClientError> {
        let topic = request
            .properties
            .response_topic
            .clone()
            .ok_or(ClientError::NotARequest)?;
        let mut options = PublishOptions::new().qos(request.qos);
        if let Some(c) = &request.properties.correlation_data {
            options = options.correlation_data(c.clone());
        }
        self.publish_with(topic, payload, options).await
    }
}
