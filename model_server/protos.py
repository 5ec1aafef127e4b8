"""TF Serving's MonitoringConfig and BatchingParameters protos.

`tensorflow-serving-api` does not ship them, so they are declared here with TF
Serving's package, message names, field names and numbers
(config/monitoring_config.proto, servables/tensorflow/session_bundle_config.proto),
built at import time from a FileDescriptorProto: no generated code to keep in step
with the protobuf runtime.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto


def _file(name, messages, dependencies=()):
    proto = descriptor_pb2.FileDescriptorProto(name=name, package="tensorflow.serving", syntax="proto3",
                                               dependency=list(dependencies))
    for message_name, fields in messages:
        message = proto.message_type.add(name=message_name)
        for field_name, number, kind, type_name, label in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    return proto


_OPTIONAL, _REPEATED = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
_pool = descriptor_pool.Default()
_pool.Add(_file("tensorflow_serving_lab/monitoring_config.proto", [
    ("PrometheusConfig", [
        ("enable", 1, _FIELD.TYPE_BOOL, None, _OPTIONAL),
        ("path", 2, _FIELD.TYPE_STRING, None, _OPTIONAL),
    ]),
    ("MonitoringConfig", [
        ("prometheus_config", 1, _FIELD.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", _OPTIONAL),
    ]),
]))
_pool.Add(_file("tensorflow_serving_lab/batching_parameters.proto", [
    ("BatchingParameters", [
        ("max_batch_size", 1, _FIELD.TYPE_MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
        ("batch_timeout_micros", 2, _FIELD.TYPE_MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
        ("max_enqueued_batches", 3, _FIELD.TYPE_MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
        ("num_batch_threads", 4, _FIELD.TYPE_MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
        ("thread_pool_name", 5, _FIELD.TYPE_MESSAGE, ".google.protobuf.StringValue", _OPTIONAL),
        ("allowed_batch_sizes", 6, _FIELD.TYPE_INT64, None, _REPEATED),
        ("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL, None, _OPTIONAL),
    ]),
], dependencies=[wrappers_pb2.DESCRIPTOR.name]))  # importing wrappers_pb2 put it in the pool

PrometheusConfig = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.serving.PrometheusConfig"))
MonitoringConfig = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
BatchingParameters = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
