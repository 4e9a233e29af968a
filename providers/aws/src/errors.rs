//! AWS errors as cloudflow errors: the action, the service's code and message; credentials and
//! spec fields named so a user knows what to fix.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use cloudflow_provider_api::{ProviderError, Resource};

pub fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.code()
}

pub fn api<E>(
    action: &str,
    e: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.code().unwrap_or_default().to_string();
    let message = match (&e, code.as_str()) {
        (
            _,
            "AuthFailure"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch",
        ) => format!(
            "AWS refused the credentials ({code}: {}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
            e.message().unwrap_or_default()
        ),
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => {
            format!("cannot reach the EC2 endpoint: {}", DisplayErrorContext(&e))
        }
        (SdkError::ConstructionFailure(_), _) => format!(
            "no usable AWS credentials or region: {} (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
            DisplayErrorContext(&e)
        ),
        _ if !code.is_empty() => format!("{code}: {}", e.message().unwrap_or_default()),
        (SdkError::ServiceError(se), _) => {
            format!(
                "the EC2 endpoint answered HTTP {} without an error code",
                se.raw().status().as_u16()
            )
        }
        _ => DisplayErrorContext(&e).to_string(),
    };
    ProviderError::Api {
        provider: "aws",
        action: action.to_string(),
        message,
    }
}

/// An error about a value of the spec, named by its path (`provider.aws.instance_type`).
pub fn field_error(field: &str, message: String) -> ProviderError {
    ProviderError::Spec {
        field: field.to_string(),
        message,
    }
}

pub fn journal_err(r: &Resource, e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Journal { .. } => e,
        other => ProviderError::Journal {
            resource: r.to_string(),
            message: other.to_string(),
        },
    }
}
