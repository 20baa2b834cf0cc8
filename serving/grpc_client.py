"""The OIP gRPC side of :class:`~kfp_serve.serving.endpoint.Endpoint` (``protocol="grpc"``).

Requests are the same v2 bodies the REST path sends, carried as ``raw_input_contents`` (the
layout of the binary extension, no per-value protobuf fields); answers come back in the v2 REST
shape, so code reading ``response["outputs"]`` works over both transports.
"""

from __future__ import annotations

from typing import Any

from kfp_serve.retry import retrying
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime.grpc_server import _pb, response_to_v2, v2_to_request

#: Status codes that mean "not there yet / switching over" and are retried within the window.
_RETRY = ("UNAVAILABLE",)


class GrpcClient:
    """A channel to one endpoint's gRPC address.

    Args:
        endpoint: The endpoint's name (for messages).
        address: ``host:port`` of its gRPC service.
        timeout: Seconds one call may take (its deadline).
        retry_window: Seconds during which UNAVAILABLE is retried with backoff.
        authority: The ``:authority`` to send instead of ``address`` (the service's host name
            when ``address`` is an ingress gateway).
    """

    def __init__(
        self,
        endpoint: str,
        address: str,
        timeout: float,
        retry_window: float,
        authority: str | None = None,
    ) -> None:
        import grpc

        self.endpoint = endpoint
        self.address = address
        self.timeout = timeout
        self.retry_window = retry_window
        self.pb, pb_grpc = _pb()
        # A proxy from the environment must never see loopback traffic.
        options = [("grpc.max_receive_message_length", -1), ("grpc.enable_http_proxy", 0)]
        if authority:
            # Through an ingress gateway the service is named by the HTTP/2 :authority (what
            # the Host header is for REST).
            options.append(("grpc.default_authority", authority))
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def infer(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """``ModelInfer`` of a v2 request body; the answer as a v2 answer dict."""
        request = v2_to_request(self.pb, model, body)
        return response_to_v2(self._call("ModelInfer", request, "predict"))

    def ready(self, model: str, timeout: float) -> bool:
        """``ModelReady``: one quick probe, False on any failure."""
        import grpc

        try:
            answer = self.stub.ModelReady(self.pb.ModelReadyRequest(name=model), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(answer.ready)

    def metadata(self, model: str) -> dict[str, Any]:
        """``ModelMetadata`` as the dict ``GET /v2/models/NAME`` answers."""
        answer = self._call(
            "ModelMetadata", self.pb.ModelMetadataRequest(name=model), "metadata"
        )
        return {
            "name": answer.name,
            "versions": list(answer.versions),
            "platform": answer.platform,
            "inputs": [_tensor_meta(t) for t in answer.inputs],
            "outputs": [_tensor_meta(t) for t in answer.outputs],
        }

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any, what: str) -> Any:
        import grpc

        class _Unavailable(Exception):
            pass

        def once() -> Any:
            try:
                return getattr(self.stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code().name in _RETRY:
                    raise _Unavailable from e
                raise

        try:
            return retrying(
                deadline=self.retry_window, on=_Unavailable, first_wait=0.05, max_wait=1.0
            )(once)
        except (_Unavailable, grpc.RpcError) as e:
            error = e.__cause__ if isinstance(e, _Unavailable) else e
            code, details = error.code(), error.details() or ""  # type: ignore[union-attr]
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServingError(
                    f"endpoint {self.endpoint!r} did not answer {what} over gRPC within "
                    f"{self.timeout:.0f} s (at {self.address}); pass a larger timeout= or "
                    "check the server's load"
                ) from None
            raise ServingError(
                f"endpoint {self.endpoint!r} refused the {what} call over gRPC at "
                f"{self.address} ({code.name}): {details}"
            ) from None


def _tensor_meta(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
