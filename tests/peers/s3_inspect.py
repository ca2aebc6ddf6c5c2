"""Looks inside an S3 bucket with boto3, independently of stategate.

Usage: s3_inspect.py COMMAND BUCKET [ARG]
  create-bucket BUCKET         create the bucket
  keys BUCKET PREFIX           print every key under PREFIX, one per line
  head BUCKET KEY              print HeadObject's answer as JSON
  acl BUCKET KEY               print GetObjectAcl's grants as JSON
  get BUCKET KEY               write the object's body to stdout
  put BUCKET KEY               store stdin as the object
  put-many BUCKET              store a small object at each key stdin lists, one per line
  delete-bucket BUCKET         delete every object, then the bucket

The endpoint and credentials come from the environment: S3_ENDPOINT,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""

import json
import os
import sys

import boto3
from botocore.config import Config


def main():
    command, bucket = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    if command == "create-bucket":
        s3.create_bucket(Bucket=bucket)
    elif command == "keys":
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=arg
        ):
            for obj in page.get("Contents", []):
                print(obj["Key"])
    elif command == "head":
        head = s3.head_object(Bucket=bucket, Key=arg)
        head.pop("ResponseMetadata", None)
        print(json.dumps(head, default=str))
    elif command == "acl":
        print(json.dumps(s3.get_object_acl(Bucket=bucket, Key=arg)["Grants"]))
    elif command == "get":
        sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=arg)["Body"].read())
    elif command == "put":
        s3.put_object(Bucket=bucket, Key=arg, Body=sys.stdin.buffer.read())
    elif command == "put-many":
        for key in sys.stdin.read().split():
            s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    elif command == "delete-bucket":
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
