"""Makes an IAM user with full access on a moto server started with
INITIAL_NO_AUTH_ACTION_COUNT=3 (these are its three calls), prints its key as --creds JSON.
Usage: python s3_user.py ENDPOINT"""
import json
import sys

import boto3

endpoint = sys.argv[1]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
iam.create_user(UserName="sshpyk")
key = iam.create_access_key(UserName="sshpyk")["AccessKey"]
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
iam.put_user_policy(UserName="sshpyk", PolicyName="all", PolicyDocument=json.dumps(policy))
print(json.dumps({"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
