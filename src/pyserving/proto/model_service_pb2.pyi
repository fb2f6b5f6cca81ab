from pyserving.proto import tf_serving_apis_pb2 as _tf_serving_apis_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
